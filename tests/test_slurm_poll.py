"""The cap on the SLURM executor plugin's status-check back-off (xaipipe.slurm): no cluster
needed, the plugin's own Executor class is patched and restored."""
import pytest

from xaipipe.slurm import cap_status_interval

slurm_plugin = pytest.importorskip("snakemake_executor_plugin_slurm")


@pytest.fixture
def executor():
    """An Executor instance without its constructor (only the interval property is used);
    the class is restored afterwards."""
    cls = slurm_plugin.Executor
    before = cls.__dict__.get("next_seconds_between_status_checks")
    e = object.__new__(cls)
    e._next_seconds_between_status_checks = None
    yield e
    if before is not None:
        cls.next_seconds_between_status_checks = before
    elif "next_seconds_between_status_checks" in cls.__dict__:
        delattr(cls, "next_seconds_between_status_checks")


def test_cap_clamps_changes_and_lifts(executor):
    assert cap_status_interval(10) is True
    executor.next_seconds_between_status_checks = 5
    assert executor.next_seconds_between_status_checks == 5      # below the cap: unchanged
    for _ in range(3):
        executor.next_seconds_between_status_checks = min(
            executor.next_seconds_between_status_checks + 10, 180)
    assert executor.next_seconds_between_status_checks == 10
    assert cap_status_interval(20) is True                       # a new cap replaces the old
    executor.next_seconds_between_status_checks = 185
    assert executor.next_seconds_between_status_checks == 20
    assert cap_status_interval(None) is False                    # lifted: the plugin's own
    executor.next_seconds_between_status_checks = 185
    assert executor.next_seconds_between_status_checks == 185
    assert isinstance(type(executor).next_seconds_between_status_checks, property)
