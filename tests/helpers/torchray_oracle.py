"""TorchRay (``facebookresearch/TorchRay``, PyPI ``torchray``) as an oracle for the smooth
mask, loaded in isolation: it is never installed into the project's environment (it pins
nothing usable today and pulls pycocotools/pymongo), only its pure-Python sources are put on
``sys.path`` while ``torchray.attribution.extremal_perturbation`` is imported.

Where the sources come from, first hit wins:
- ``$XAIPIPE_TORCHRAY``: a folder that holds the ``torchray/`` package, or a ``torchray-*``
  sdist (``.tar.gz``) to unpack;
- ``/tmp/torchray_pkg`` (``pip install --no-deps --target /tmp/torchray_pkg torchray``);
- ``/tmp/torchray_dl`` (``pip download torchray --no-deps -d /tmp/torchray_dl``), the sdist
  unpacked there or next to it.

Importing needs matplotlib, PIL and packaging (present in the dev environment); matplotlib
runs with the Agg backend. :func:`load` returns the module or ``None`` with the reason;
:func:`require` returns the module, or skips (fails under ``XAIPIPE_REQUIRE_ORACLES=1``, see
``tests/helpers/oracles.py``) naming what is missing.
"""
from __future__ import annotations

import glob
import importlib
import os
import sys
import tarfile
import tempfile
from pathlib import Path

from helpers import oracles

_CACHE: dict = {}


def _candidates() -> list[Path]:
    roots = [os.environ.get("XAIPIPE_TORCHRAY"), "/tmp/torchray_pkg", "/tmp/torchray_dl"]
    return [Path(r) for r in roots if r]


def _source_dir() -> Path | None:
    for root in _candidates():
        if (root / "torchray" / "attribution" / "extremal_perturbation.py").is_file():
            return root
        for sub in sorted(glob.glob(str(root / "torchray-*"))):
            sub = Path(sub)
            if sub.is_dir() and (sub / "torchray" / "attribution").is_dir():
                return sub
        for tgz in sorted(glob.glob(str(root / "torchray-*.tar.gz"))):
            dest = Path(tempfile.mkdtemp(prefix="torchray_src_"))
            with tarfile.open(tgz) as tar:
                tar.extractall(dest, filter="data")
            for sub in dest.glob("torchray-*"):
                if (sub / "torchray" / "attribution").is_dir():
                    return sub
    return None


def load():
    """(module ``torchray.attribution.extremal_perturbation`` or None, reason)."""
    if "ep" in _CACHE:
        return _CACHE["ep"]
    src = _source_dir()
    if src is None:
        out = (None, "TorchRay sources not found (set XAIPIPE_TORCHRAY or run `pip download "
                     "torchray --no-deps -d /tmp/torchray_dl`)")
    else:
        os.environ.setdefault("MPLBACKEND", "Agg")
        sys.path.insert(0, str(src))
        try:
            out = (importlib.import_module("torchray.attribution.extremal_perturbation"),
                   f"TorchRay from {src}")
        except Exception as err:          # missing deps, API drift: report, do not fail
            out = (None, f"TorchRay at {src} does not import: {type(err).__name__}: {err}")
        finally:
            sys.path.remove(str(src))
    _CACHE["ep"] = out
    return out


def require():
    """The ``extremal_perturbation`` module; skips the calling test (fails when
    ``XAIPIPE_REQUIRE_ORACLES=1``) with the reason when TorchRay cannot be loaded."""
    ep, why = load()
    if ep is None:
        oracles.missing("TorchRay (torchray.attribution.extremal_perturbation)", why)
    return ep
