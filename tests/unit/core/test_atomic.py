import logging
import os
import re
import socket
import subprocess
import sys

import pytest

from xaipipe.utils import atomic_path


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "s.zarr"
    dead = _dead_pid()
    stale = tmp_path / f".s.zarr.tmp-{dead}-0123abcd"
    (stale / "saliency").mkdir(parents=True)
    stale_file = tmp_path / f".s.zarr.tmp-{dead}-89abcdef"
    stale_file.write_text("half")
    live = tmp_path / f".s.zarr.tmp-{os.getpid()}-deadbeef"          # another writer in here
    live.mkdir()
    parent = tmp_path / f".s.zarr.tmp-{os.getppid()}-00000000"      # a live process
    parent.mkdir()
    other = tmp_path / f".t.zarr.tmp-{dead}-0123abcd"               # another target
    other.mkdir()
    odd = tmp_path / f".s.zarr.tmp-{dead}-0123abcd.x.tmp-{dead}-00000000"   # not ours
    odd.mkdir()
    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert not stale.exists() and not stale_file.exists()
    assert live.exists() and parent.exists() and other.exists() and odd.exists()


def test_stale_temporaries_are_judged_on_their_own_host_only(tmp_path, caplog):
    """On a file system shared by cluster nodes a pid means something only on the host that
    wrote the temporary: another host's is kept whatever its pid (with the reason logged);
    this host's goes when its pid is dead, stays while it runs."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())
    target = tmp_path / "s.zarr"
    dead = _dead_pid()
    other = tmp_path / f".s.zarr.tmp-{dead}@{host}x.other-node-0123abcd"
    other.mkdir()
    mine_dead = tmp_path / f".s.zarr.tmp-{dead}@{host}-89abcdef"
    (mine_dead / "saliency").mkdir(parents=True)
    mine_live = tmp_path / f".s.zarr.tmp-{os.getppid()}@{host}-00000000"
    mine_live.mkdir()
    with caplog.at_level(logging.INFO, logger="xaipipe"):
        with atomic_path(target) as tmp:
            assert tmp.name.startswith(f".s.zarr.tmp-{os.getpid()}@{host}-")
            tmp.write_text("done")
    assert target.read_text() == "done"
    assert other.exists() and mine_live.exists() and not mine_dead.exists()
    assert f"keeping {other}: a temporary of host {host}x.other-node (this is {host})" \
        in caplog.text


def test_permission_error_means_alive(tmp_path, monkeypatch):
    def kill(pid, sig):
        raise PermissionError
    stale = tmp_path / ".f.tmp-4242-0123abcd"
    stale.mkdir()
    monkeypatch.setattr(os, "kill", kill)
    with atomic_path(tmp_path / "f") as tmp:
        tmp.write_text("x")
    assert stale.exists()


def test_failure_removes_own_temporary(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(tmp_path / "f") as tmp:
            tmp.write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
