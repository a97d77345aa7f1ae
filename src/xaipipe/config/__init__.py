"""Configuration: overlays, schema, checks against the registries, and the plan of a run.

``config.yaml`` holds the catalogs (datasets, preprocess, variants, models, filters, methods,
metrics) and the ``demo`` experiment; presets add their own entries and experiments as
overlays. :func:`setup_workflow` is what the Snakefile calls; :func:`load_config` does the same
for scripts and tests.
"""
from __future__ import annotations

import contextlib
import difflib
import io
import os
import sys
from pathlib import Path

from ..errors import ConfigError
from .check import RESERVED, Experiment, check_config, check_files, method_of, metric_of
from ..jobs import ModelSpec
from .overlays import check_overlays, load_yaml
from .result_paths import Paths
from .plan import Plan
from .schema import ROOT, SCHEMA, validate_schema


def active_experiments(config: dict, targets=(), plan: Plan | None = None) -> list[str]:
    """The experiments a run builds, whose data are checked before any job: those named as
    targets (``all``: those of ``run``); with no target, ``run``; a file target: the experiment
    whose output it is (a table, a figure, a summary), else every experiment (an intermediate
    file may be any experiment's). ``targets=None`` (unknown): every experiment."""
    exps = list(config["experiments"])
    run = list(config.get("run") or exps)
    if targets is None:
        return exps
    targets = list(targets)
    if not targets:
        return run
    owner = {}
    if plan is not None:
        owner = {os.path.abspath(f): e for e in exps for f in plan.experiment_targets(e)}
    out: list[str] = []
    for t in targets:
        if t in config["experiments"]:
            names = [t]
        elif t == "all":
            names = run
        elif os.path.abspath(t) in owner:
            names = [owner[os.path.abspath(t)]]
        else:                                   # another rule or an intermediate file
            return exps
        out += [n for n in names if n not in out]
    return out


def preset_experiments(presets) -> dict[str, list[Path]]:
    """Experiment name -> the preset files (``presets/*.yaml``) that define it."""
    out: dict[str, list[Path]] = {}
    for f in sorted(Path(presets).glob("*.yaml")) if presets else ():
        try:
            names = load_yaml(f).get("experiments") or {}
        except ConfigError:
            continue
        for name in names if isinstance(names, dict) else ():
            out.setdefault(str(name), []).append(f)
    return out


def _shown(path: Path) -> str:
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def check_targets(config: dict, targets, presets=None) -> None:
    """Every target that is not a file path names an experiment or a workflow rule; raises
    :class:`ConfigError` saying which experiments exist (and the closest one), or which preset
    of ``presets`` (a folder) defines the name when that preset is not loaded."""
    rules = set(config["experiments"]) | set(RESERVED)
    for t in targets or ():
        if t in rules or t.startswith("explain_sweep_") or os.sep in t or "/" in t \
                or os.path.exists(t):
            continue
        defined = preset_experiments(presets)
        if t in defined:
            files = " or ".join(_shown(f) for f in defined[t])
            raise ConfigError(
                f"target {t!r}: no experiment of that name in the loaded config; it is defined "
                f"in {files}, which is not loaded: snakemake {t} --configfile "
                f"{_shown(defined[t][0])} (the target before --configfile, which takes every "
                f"word after it)")
        known = sorted(config["experiments"])
        others = {n: fs for n, fs in defined.items() if n not in config["experiments"]}
        listed = ", ".join(known)
        if others:
            listed += "; in presets not loaded: " + ", ".join(
                f"{n} ({_shown(fs[0])})" for n, fs in sorted(others.items()))
        close = difflib.get_close_matches(t, known + sorted(others), n=1, cutoff=0.6)
        hint = ""
        if close:
            c = close[0]
            hint = f"; did you mean {c!r}" + ("" if c in config["experiments"] else
                                               f" (--configfile {_shown(others[c][0])})") + "?"
        raise ConfigError(f"target {t!r} is neither an experiment nor a workflow rule nor a "
                          f"file path; experiments: {listed}{hint}")


def snakemake_targets(workflow) -> tuple[str, ...] | None:
    """The targets (rule names or files) the running Snakemake was asked for, while the
    Snakefile is parsed; None where they cannot be known.

    Snakemake 9 parses the Snakefile before it hands the workflow its DAG settings
    (``workflow.dag_settings`` is None until ``snakemake.api.DAGApi.__post_init__`` has
    parsed it), so they are read from that ``DAGApi`` on the call stack: the targets exactly
    as Snakemake parsed them, in whatever order the command line gave them. Failing that
    (``--lint``, ``--list-rules``: no DAG), from ``sys.argv`` with Snakemake's own parser."""
    settings = getattr(workflow, "dag_settings", None)
    if settings is None:
        settings = _dag_settings_on_stack()
    if settings is not None:
        return tuple(settings.targets)
    return _argv_targets()


def _dag_settings_on_stack():
    try:
        from snakemake.settings.types import DAGSettings
    except ImportError:
        return None
    frame = sys._getframe(1)
    while frame is not None:
        try:
            settings = getattr(frame.f_locals.get("self"), "dag_settings", None)
        except Exception:                       # noqa: BLE001 - a property that fails
            settings = None
        if isinstance(settings, DAGSettings):
            return settings
        frame = frame.f_back
    return None


def _argv_targets() -> tuple[str, ...] | None:
    argv = sys.argv
    if not argv or "snakemake" not in (Path(argv[0]).name, Path(argv[0]).parent.name):
        return None
    try:
        from snakemake.cli import parse_args
        with contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            _, args = parse_args(argv[1:])
    except (Exception, SystemExit):             # noqa: BLE001 - not a command line we know
        return None
    return tuple(args.targets or ())


def prepare(config: dict, files=(), targets=(), check_data: bool = True,
            presets=ROOT / "presets") -> Plan:
    """Overlay conflicts, schema (defaults filled in), registry checks, the targets (see
    :func:`check_targets`; ``presets``: the folder of the presets it names), the data on disk
    of the experiments that run (``targets``: see :func:`active_experiments`; ``check_data``
    False skips it, for the job processes of a run whose main process checked it); returns
    the :class:`Plan`. Raises :class:`ConfigError`."""
    if files:
        check_overlays(files)
    validate_schema(config)
    check_config(config)
    check_targets(config, targets, presets)
    plan = Plan(config)
    if check_data:
        check_files(config, active_experiments(config, targets, plan))
    return plan


def setup_workflow(config: dict, files=(), targets=(), check_data: bool = True,
                   presets=ROOT / "presets") -> Plan:
    """For the Snakefile: :func:`prepare`, with a config error printed as one short message
    (no traceback) before Snakemake stops."""
    try:
        return prepare(config, files, targets, check_data, presets)
    except ConfigError as e:
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
           "check_targets", "deep_update", "load_config", "method_of", "metric_of", "prepare", "preset_experiments",
           "setup_workflow", "snakemake_targets", "validate_schema"]
