"""The cap on the SLURM executor plugin's status-check back-off (xaipipe.slurm): no cluster
needed, the plugin's own Executor class is patched and restored."""
import pytest

from xaipipe.slurm import cap_status_interval, run_jobs_in_allocation

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


@pytest.fixture
def restore_job_args():
    cls = slurm_plugin.Executor
    before = cls.__dict__["additional_general_args"]
    yield cls
    cls.additional_general_args = before


def test_job_runner_swaps_the_jobstep_executor_for_the_local_one(restore_job_args):
    """`slurm.job_runner: local` turns the batch script's `--executor slurm-jobstep --jobs 1`
    into `--executor local` (its `--cores` stays), keeping every other argument; `jobstep`
    restores the plugin's own; a plugin whose arguments changed is refused by name."""
    cls = restore_job_args
    e = object.__new__(cls)
    e.workflow = type("W", (), {"executor_settings": type(
        "S", (), {"pass_command_as_script": False})()})()
    own = cls.additional_general_args(e)
    assert own.startswith("--executor slurm-jobstep --jobs 1")
    assert run_jobs_in_allocation("local") is True
    assert run_jobs_in_allocation("local") is True                # idempotent
    args = cls.additional_general_args(e)
    assert args == own.replace("--executor slurm-jobstep --jobs 1", "--executor local")
    assert "slurm-jobstep" not in args and "--jobs" not in args
    assert run_jobs_in_allocation("jobstep") is False
    assert cls.additional_general_args(e) == own
    cls.additional_general_args = lambda self: "--executor slurm-jobstep --jobs 2"
    run_jobs_in_allocation("local")
    with pytest.raises(RuntimeError, match="job_runner: jobstep"):
        cls.additional_general_args(e)
