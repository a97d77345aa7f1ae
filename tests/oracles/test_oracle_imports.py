"""tests/helpers/oracles.py: a missing oracle skips its tests, or fails them naming it when
XAIPIPE_REQUIRE_ORACLES=1 (as CI sets it)."""
import pytest

from helpers import oracles

ABSENT = "xaipipe_no_such_oracle_module"


def test_missing_oracle_skips_by_default(monkeypatch):
    monkeypatch.delenv(oracles.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"oracle {ABSENT} is missing: the why"):
        oracles.require(ABSENT, "the why")
    monkeypatch.setenv(oracles.REQUIRE_ENV, "0")
    with pytest.raises(pytest.skip.Exception):
        oracles.require(ABSENT, "the why")


def test_missing_oracle_fails_when_required(monkeypatch):
    monkeypatch.setenv(oracles.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception,
                       match=f"XAIPIPE_REQUIRE_ORACLES=1 but the oracle {ABSENT} is missing: "
                             "the why .*ModuleNotFoundError"):
        oracles.require(ABSENT, "the why")
    with pytest.raises(pytest.fail.Exception, match="oracle TorchRay is missing: no sources"):
        oracles.missing("TorchRay", "no sources")


def test_present_oracle_is_the_module(monkeypatch):
    import json
    monkeypatch.setenv(oracles.REQUIRE_ENV, "1")
    assert oracles.require("json", "stdlib") is json


def test_torchray_oracle_requires_through_the_helper(monkeypatch):
    """With no TorchRay sources anywhere, the smooth mask's oracle fails under
    XAIPIPE_REQUIRE_ORACLES=1 and skips otherwise."""
    from helpers import torchray_oracle
    monkeypatch.setattr(torchray_oracle, "_CACHE", {})
    monkeypatch.setattr(torchray_oracle, "_candidates", lambda: [])
    monkeypatch.setenv(oracles.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="oracle TorchRay .* sources not found"):
        torchray_oracle.require()
    monkeypatch.setenv(oracles.REQUIRE_ENV, "")
    with pytest.raises(pytest.skip.Exception, match="sources not found"):
        torchray_oracle.require()
