"""Configuration: overlays, schema, checks against the registries, and the plan of a run.

``config.yaml`` holds the catalogs (datasets, preprocess, variants, models, filters, methods,
metrics) and the ``demo`` experiment; presets add their own entries and experiments as
overlays. :func:`setup_workflow` is what the Snakefile calls; :func:`load_config` does the same
for scripts and tests.
"""
from __future__ import annotations

from ..errors import ConfigError
from .check import RESERVED, Experiment, check_config, check_files, method_of, metric_of
from ..jobs import ModelSpec
from .overlays import check_overlays, load_yaml
from .result_paths import Paths
from .plan import Plan
from .schema import ROOT, SCHEMA, validate_schema


def active_experiments(config: dict, targets=()) -> list[str]:
    """The experiments a run builds: those named as targets, else ``run``."""
    named = [t for t in targets if t in config["experiments"]]
    if named:
        return named
    if any(t not in ("all",) for t in targets):
        return list(config["experiments"])      # file targets: check everything
    return list(config.get("run") or config["experiments"])


def prepare(config: dict, files=(), targets=()) -> Plan:
    """Overlay conflicts, schema (defaults filled in), registry checks, the data on disk of
    the experiments that run; returns the :class:`Plan`. Raises :class:`ConfigError`."""
    if files:
        check_overlays(files)
    validate_schema(config)
    check_config(config)
    check_files(config, active_experiments(config, targets))
    return Plan(config)


def setup_workflow(config: dict, files=(), targets=()) -> Plan:
    """For the Snakefile: :func:`prepare`, with a config error printed as one short message
    (no traceback) before Snakemake stops."""
    try:
        return prepare(config, files, targets)
    except ConfigError as e:
        import sys
        print(f"ConfigError: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def load_config(*paths, overrides: dict | None = None, targets=()) -> dict:
    """Read and merge config files (default: the repository's ``config.yaml``; later files
    overlay earlier ones as Snakemake merges them), then check them like the workflow does."""
    files = [str(p) for p in paths] or [str(ROOT / "config.yaml")]
    cfg: dict = {}
    for f in files:
        cfg = deep_update(cfg, load_yaml(f))
    if overrides:
        cfg = deep_update(cfg, overrides)
    prepare(cfg, files, targets)
    return cfg


def deep_update(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


__all__ = ["RESERVED", "ROOT", "SCHEMA", "ConfigError", "Experiment", "ModelSpec", "Paths",
           "Plan", "active_experiments", "check_config", "check_files", "check_overlays",
           "deep_update", "load_config", "method_of", "metric_of", "prepare", "setup_workflow",
           "validate_schema"]
