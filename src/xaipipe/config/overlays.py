"""Config files as overlays: ``config.yaml`` plus ``--configfile presets/X.yaml``.

Snakemake merges the files itself (dicts recursively, later files win). Catalog entries and
experiments are *named things*: a name defined twice with different contents is almost
always a mistake (two presets both defining ``ig`` differently), so :func:`check_overlays`
stops with an error naming the entry and both files. Values given on the command line
(``--config``) are deliberate overrides and are not checked.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import ConfigError

NAMED_SECTIONS = ("datasets", "preprocess", "variants", "models", "filters", "methods",
                  "metrics", "experiments")


def load_yaml(path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the config file: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, not "
                          f"{type(data).__name__}")
    return data


def _normal(section: str, name: str, value):
    """Contents compared after filling declared defaults, so ``{}`` equals ``{steps: 128}``."""
    from .check import normalise_entry
    try:
        return normalise_entry(section, name, value)
    except ConfigError:
        return value


def check_overlays(files) -> None:
    """Raise :class:`ConfigError` if two of ``files`` define the same named entry differently."""
    seen: dict[tuple[str, str], tuple[object, str]] = {}
    for f in dict.fromkeys(str(p) for p in files):
        data = load_yaml(f)
        for section in NAMED_SECTIONS:
            for name, value in (data.get(section) or {}).items():
                key = (section, name)
                if key in seen:
                    before, where = seen[key]
                    if before != value and _normal(section, name, before) != \
                            _normal(section, name, value):
                        raise ConfigError(
                            f"{section}.{name} is defined differently in {where} and {f}: "
                            f"{before!r} vs {value!r}; give one of them another name")
                else:
                    seen[key] = (value, f)
