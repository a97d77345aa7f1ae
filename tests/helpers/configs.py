"""The repository's config.yaml as a dict to change in tests, and the config checks."""
import copy

import yaml

from xaipipe.config import ROOT, check_config, validate_schema

BASE = yaml.safe_load((ROOT / "config.yaml").read_text())


def cfg(**changes):
    c = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = c
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return c


def check(c):
    return check_config(validate_schema(c))
