"""Small shared helpers: seeds, devices, atomic outputs, batching."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from any JSON-serialisable parts, stable across runs, machines and
    Python versions (unlike ``hash``). Used so that a random draw depends only on
    (global seed, image id, method, hyper-parameters, ...), never on batching or order."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def generator(*parts) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed` (draw on CPU, then move: the numbers
    are the same on every device)."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None: CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but CUDA is not available")
    return dev


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)              # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: exists, owned by another user;
        return True                   # anything else: keep the file, to be safe
    return True


def _remove_stale_tmps(path: Path) -> None:
    """Remove ``.{name}.tmp-{pid}-{hex}`` siblings of ``path`` left by killed writers (their
    pid is not running). Temporaries of live processes and of other targets are kept."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-(\d+)-[0-9a-f]+")
    for sib in path.parent.glob(glob.escape(f".{path.name}.tmp-") + "*"):
        m = pattern.fullmatch(sib.name)
        if m and int(m[1]) != os.getpid() and not _pid_alive(int(m[1])):
            _remove(sib)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary sibling path to write a file or directory to; on success it is
    renamed to ``path`` (replacing what was there), on any error it is removed. So an output
    is either complete or absent. Temporaries that killed runs left next to ``path`` are
    removed first (see :func:`_remove_stale_tmps`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmps(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {path}")
        if path.exists() or path.is_symlink():
            old = _tmp_sibling(path)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def eval_mode(model):
    """Run ``model`` (if any) in eval mode, then give every module back its own training flag,
    so mixed modes (e.g. frozen BatchNorm in a training net) come back exactly."""
    modes = [(m, m.training) for m in model.modules()] if model is not None else []
    if model is not None:
        model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def as_list(x) -> list:
    """A Snakemake input entry (a path, or a list of them, or nothing) as a list of paths."""
    if x is None:
        return []
    if isinstance(x, (str, os.PathLike)):
        return [str(x)]
    return [str(p) for p in x]
