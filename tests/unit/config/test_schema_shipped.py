"""The config schema ships with the package: it lives inside ``xaipipe/config``, the package
data of pyproject.toml includes it, and the checkout's ``schemas/`` links to that one file (no
second copy to drift)."""
import fnmatch
import tomllib
from pathlib import Path

import xaipipe
from xaipipe.config import ROOT, SCHEMA, validate_schema


def test_the_schema_is_package_data():
    pkg = Path(xaipipe.__file__).resolve().parent
    assert SCHEMA.is_file() and pkg in SCHEMA.resolve().parents, SCHEMA
    rel = SCHEMA.resolve().relative_to(pkg).as_posix()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["xaipipe"]
    assert any(fnmatch.fnmatch(rel, g) for g in globs), (rel, globs)


def test_the_checkout_schema_is_the_same_file():
    link = ROOT / "schemas" / "config.schema.yaml"
    assert link.resolve() == SCHEMA.resolve()


def test_the_schema_validates_from_its_packaged_place(tmp_path):
    import yaml
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert validate_schema(cfg, SCHEMA)["explain"]["batch_size"] == 32
