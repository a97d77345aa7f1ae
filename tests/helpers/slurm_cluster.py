"""A throw-away one-node SLURM cluster for the `slurm` tests (and by hand: docs/cluster.md).

`one_node_cluster()` reuses a cluster that already answers `sinfo`; otherwise, as root, it
starts munged (only if no munged answers on the default socket), slurmctld and slurmd on this
machine with every file (munge key, slurm.conf, state, spool, logs) in a fresh temporary
folder, waits until the node is idle, and on exit stops exactly the daemons it started (by
their pids) and removes what it created.

Why these settings: Debian's `slurm-wlm` 22.05 without slurmdbd, so no accounting (the
executor plugin then polls `squeue`); `select/cons_tres` with CPUs and memory as consumable
resources, the node's real topology from `slurmd -C` and ~90% of its memory, so a job asking
for more than the node has is rejected or waits, as on a real cluster. slurmd runs
*configless* (`--conf-server`): it caches the controller's slurm.conf and links it at
/run/slurm/conf, where client commands look when neither SLURM_CONF nor /etc/slurm/slurm.conf
exist. That matters because the executor plugin strips SLURM_* variables (SLURM_CONF too)
before the `srun` inside each job, and it keeps /etc untouched. slurmd fetches its config
through munge before it knows any AuthInfo, so munged listens on the default socket
(/run/munge/munge.socket.2) with a key from the temporary folder.

`python tests/helpers/slurm_cluster.py` starts a cluster and keeps it up until Ctrl-C.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REQUIRE_ENV = "XAIPIPE_REQUIRE_SLURM"
BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sinfo", "squeue", "sbatch",
            "srun")
MUNGE_RUN = Path("/run/munge")
CONFIGLESS_LINK = Path("/run/slurm/conf")


class SlurmUnavailable(RuntimeError):
    """No cluster answers and none can be started here (not root, binaries missing)."""


@dataclass
class Cluster:
    """A cluster that answers `sinfo`: `env` is what client commands need (SLURM_CONF when
    this module started it), `started` the daemons this module started (empty if reused)."""

    env: dict[str, str]
    cpus: int
    memory_mb: int
    state: Path | None = None
    started: dict[str, subprocess.Popen] = field(default_factory=dict)


def _run(cmd, env=None, timeout=10) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def sinfo_answers(env=None) -> bool:
    """True when `sinfo` reaches a controller that has at least one node."""
    if shutil.which("sinfo") is None:
        return False
    try:
        res = _run(["sinfo", "-h", "-N", "-o", "%N"], env=env)
    except subprocess.TimeoutExpired:
        return False
    return res.returncode == 0 and bool(res.stdout.strip())


def node_states(env=None) -> list[str]:
    res = _run(["sinfo", "-h", "-N", "-o", "%T"], env=env)
    return res.stdout.split() if res.returncode == 0 else []


def node_resources(env=None) -> tuple[int, int]:
    """(CPUs, memory in MB) of the smallest node: what one job can get at most."""
    res = _run(["sinfo", "-h", "-N", "-o", "%c %m"], env=env)
    rows = [tuple(int(x.rstrip("+")) for x in line.split()) for line in res.stdout.splitlines()
            if line.strip()]
    return min(r[0] for r in rows), min(r[1] for r in rows)


def munge_answers() -> bool:
    """True when a munged on the default socket encodes and decodes a credential."""
    try:
        enc = _run(["munge", "-n"])
        if enc.returncode != 0:
            return False
        dec = subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, text=True,
                             timeout=10)
    except (subprocess.TimeoutExpired, FileNotFoundError):
        return False
    return dec.returncode == 0


def why_not_startable() -> str | None:
    """The reason a cluster cannot be started here, or None."""
    if os.geteuid() != 0:
        return "starting a SLURM cluster needs root (slurmd runs jobs as their users)"
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return (f"SLURM binaries missing: {', '.join(missing)} "
                "(apt-get install slurm-wlm munge, or .ci/slurm-setup.sh)")
    return None


def slurm_conf(state: Path, node_line: str, memory_mb: int) -> str:
    """slurm.conf of the one-node cluster; `node_line` is `slurmd -C`'s NodeName line."""
    host = node_line.split()[0].split("=", 1)[1]
    node = " ".join(f"RealMemory={memory_mb}" if w.startswith("RealMemory=") else w
                    for w in node_line.split())
    return f"""\
# one-node cluster of tests/helpers/slurm_cluster.py (state in {state})
ClusterName=xaipipe
SlurmctldHost={host}(127.0.0.1)
SlurmctldParameters=enable_configless
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=300
InactiveLimit=0
KillWait=5
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _start(name: str, cmd: list[str], state: Path, started: dict) -> None:
    log = open(state / f"{name}.out", "wb")
    started[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()


def _wait(what: str, ok, started: dict, state: Path, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ok():
            return
        for name, p in started.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode} while waiting for "
                                   f"{what}:\n{_tail(state, name)}")
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {state}:\n"
                       + "\n".join(_tail(state, n) for n in started))


def _tail(state: Path, name: str, n: int = 2000) -> str:
    text = ""
    for f in (state / f"{name}.out", state / f"{name}.log"):
        if f.exists():
            text += f"--- {f}\n" + f.read_text(errors="replace")[-n:]
    return text


def _stop(started: dict[str, subprocess.Popen]) -> None:
    """SIGTERM the daemons this module started (last started first), SIGKILL stragglers."""
    for name in reversed(list(started)):
        p = started[name]
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


@contextmanager
def one_node_cluster(timeout: float = 60):
    """Yield a `Cluster`: the one answering `sinfo`, or a one-node cluster started here.
    Raises SlurmUnavailable when none answers and none can be started."""
    if sinfo_answers():
        cpus, mem = node_resources()
        yield Cluster(env=dict(os.environ), cpus=cpus, memory_mb=mem)
        return
    reason = why_not_startable()
    if reason:
        raise SlurmUnavailable(reason)
    res = _run(["slurmd", "-C"])
    node_line = next((ln for ln in res.stdout.splitlines() if ln.startswith("NodeName=")), None)
    if res.returncode != 0 or node_line is None:
        raise SlurmUnavailable(f"`slurmd -C` failed: {res.stdout}{res.stderr}")
    total_mb = int(node_line.split("RealMemory=")[1].split()[0])
    memory_mb = int(total_mb * 0.9)            # slurmd drains a node that has less than this

    state = Path(tempfile.mkdtemp(prefix="xaipipe-slurm-"))
    created_munge_run = not MUNGE_RUN.exists()
    had_configless_link = CONFIGLESS_LINK.exists() or CONFIGLESS_LINK.is_symlink()
    created_run_slurm = not CONFIGLESS_LINK.parent.exists()
    started: dict[str, subprocess.Popen] = {}
    old_conf = os.environ.get("SLURM_CONF")
    try:
        for d in ("ctld", "spool"):
            (state / d).mkdir()
        conf = state / "slurm.conf"
        conf.write_text(slurm_conf(state, node_line, memory_mb))
        env = {**os.environ, "SLURM_CONF": str(conf)}
        if not munge_answers():
            key = state / "munge.key"
            key.write_bytes(secrets.token_bytes(1024))
            key.chmod(0o400)
            MUNGE_RUN.mkdir(mode=0o755, parents=True, exist_ok=True)
            _start("munged", ["munged", "-F", f"--key-file={key}",
                              f"--log-file={state}/munged.log",
                              f"--pid-file={state}/munged.pid",
                              f"--seed-file={state}/munged.seed"], state, started)
            _wait("munged", munge_answers, started, state, timeout)
        _start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)], state, started)
        _wait("slurmctld", lambda: _run(["scontrol", "ping"], env=env).returncode == 0,
              started, state, timeout)
        host = node_line.split()[0].split("=", 1)[1]
        _start("slurmd", ["slurmd", "-D", "-N", host, "--conf-server", "127.0.0.1"], state,
               started)
        _wait("the node to be idle", lambda: node_states(env) == ["idle"], started, state,
              timeout)
        os.environ["SLURM_CONF"] = str(conf)   # for subprocesses that inherit os.environ
        cpus, _ = node_resources(env)
        yield Cluster(env=env, cpus=cpus, memory_mb=memory_mb, state=state, started=started)
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        _stop(started)
        if not had_configless_link and CONFIGLESS_LINK.is_symlink():
            CONFIGLESS_LINK.unlink()
        if created_run_slurm and CONFIGLESS_LINK.parent.exists() \
                and not any(CONFIGLESS_LINK.parent.iterdir()):
            CONFIGLESS_LINK.parent.rmdir()
        if created_munge_run and MUNGE_RUN.exists() and not any(MUNGE_RUN.iterdir()):
            MUNGE_RUN.rmdir()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The session's `Cluster` (import this fixture into a test module). Skips with the reason
    when no cluster can be had, or fails when XAIPIPE_REQUIRE_SLURM=1 (CI with SLURM
    installed)."""
    try:
        with one_node_cluster() as cluster:
            yield cluster
    except (SlurmUnavailable, RuntimeError) as e:     # not installed, or daemons did not start
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but no SLURM cluster: {e}")
        pytest.skip(f"no SLURM cluster: {e}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)      # `kill PID` stops it cleanly too
    signal.signal(signal.SIGINT, _interrupt)       # even when started in the background
    with one_node_cluster() as c:
        print(f"SLURM up: {c.cpus} CPUs, {c.memory_mb} MB; started {list(c.started) or 'nothing'}")
        if c.state:
            print(f"export SLURM_CONF={c.env['SLURM_CONF']}   # state and logs in {c.state}")
        print(f"Ctrl-C or `kill {os.getpid()}` stops it.", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
