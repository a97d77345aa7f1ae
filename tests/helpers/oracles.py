"""Importing an oracle (an independent implementation a test compares xaipipe with): skip with
the reason when it is missing, or fail naming it when ``XAIPIPE_REQUIRE_ORACLES=1``.

Outside CI a missing oracle only skips its tests (``-ra`` lists them with the reason). CI
(``.ci/run``) sets ``XAIPIPE_REQUIRE_ORACLES=1``, as it sets ``XAIPIPE_REQUIRE_SLURM=1`` for the
SLURM tests: an oracle it is meant to run that cannot be imported is then a failure, not a
silent skip. Every oracle import in the tests goes through :func:`require` (or, for oracles
that are not plain imports, such as TorchRay's sources, through :func:`missing`):

- ``captum.attr`` (IG, Grad-CAM, StartGrad's IG baseline, Expected Gradients),
  ``saliency.core`` (PAIR: Guided IG, Blur IG, PIC), ``coshrem.shearletsystem`` (pycoshrem: the
  Hallucination Score's edges), ``pyshearlab_mind`` (the shearlet transform),
  ``pytorch_grad_cam`` (Grad-CAM, FullGrad's terms), TorchRay's ``extremal_perturbation`` (the
  smooth mask).
"""
from __future__ import annotations

import importlib
import os

import pytest

REQUIRE_ENV = "XAIPIPE_REQUIRE_ORACLES"


def required() -> bool:
    """Whether a missing oracle fails (``XAIPIPE_REQUIRE_ORACLES=1``) instead of skipping."""
    return os.environ.get(REQUIRE_ENV) == "1"


def missing(name: str, why: str):
    """Skip the calling test (or module, at import time) because the oracle ``name`` is
    missing, or fail naming it when :func:`required`. Never returns."""
    message = f"oracle {name} is missing: {why}"
    if required():
        pytest.fail(f"{REQUIRE_ENV}=1 but the {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require(module_name: str, why: str):
    """``importlib.import_module(module_name)``; if it cannot be imported (not installed, or
    one of its own imports fails), :func:`missing` with ``why`` (what the oracle checks and how
    to install it) and the import error."""
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        missing(module_name, f"{why} ({type(err).__name__}: {err})")
