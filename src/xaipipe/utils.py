"""Small shared helpers: seeds, devices, atomic outputs, batching."""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import uuid
from pathlib import Path

import numpy as np
import torch

from .errors import OutputWriteError

log = logging.getLogger("xaipipe")


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


def _host() -> str:
    """This machine's name as it goes into a temporary's name (characters other than letters,
    digits, ``.``, ``_`` and ``-`` replaced by ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "unknown"


def _tmp_sibling(path: Path) -> Path:
    """``.{name}.tmp-{pid}@{host}-{hex}``: a pid means something only on its own host (a file
    system shared by cluster nodes sees the writers of every node)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}@{_host()}-{uuid.uuid4().hex[:8]}")


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
    """Remove ``.{name}.tmp-{pid}@{host}-{hex}`` siblings of ``path`` left by killed writers:
    made on this host by a pid that is not running. A temporary of another host is kept (its
    pid cannot be checked from here; the writer may be alive on another node of a shared file
    system), and so are temporaries of live processes and of other targets. The names written
    before the host was recorded (``.{name}.tmp-{pid}-{hex}``) are judged by their pid, as
    they were."""
    pattern = re.compile(
        rf"\.{re.escape(path.name)}\.tmp-(\d+)(?:@([A-Za-z0-9._-]+))?-[0-9a-f]+")
    here = _host()
    for sib in path.parent.glob(glob.escape(f".{path.name}.tmp-") + "*"):
        m = pattern.fullmatch(sib.name)
        if not m:
            continue
        pid, host = int(m[1]), m[2]
        if host is not None and host != here:
            log.info("keeping %s: a temporary of host %s (this is %s), whose writer may still "
                     "run", sib, host, here)
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            _remove(sib)


#: errnos only a write raises: inside an :func:`atomic_path` block they always concern the output
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def _concerns_output(err: OSError, path: Path, tmp: Path) -> bool:
    """Whether ``err``, raised inside an :func:`atomic_path` block, is a failure to write the
    output (so it is reported against ``path``) rather than, say, an unreadable input."""
    if err.errno in WRITE_ERRNOS:
        return True
    hidden = f".{path.name}.tmp-"
    for name in (err.filename, err.filename2):
        if name is None or isinstance(name, int):
            continue
        f = Path(os.fsdecode(name)).absolute()
        if f in (path.absolute(), path.parent.absolute()) or f.name.startswith(hidden) or \
                tmp.absolute() in f.parents:
            return True
    return False


def write_error(err: OSError, path) -> OutputWriteError:
    """``err`` as an :class:`~xaipipe.errors.OutputWriteError` whose message names the final
    output ``path`` and the reason: "no space left on device writing results/x.zarr"."""
    path = Path(path)
    blocker = next((p for p in (path.parent, *path.parent.parents)
                    if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        return OutputWriteError(f"cannot write {path}: {blocker} is a file, not a directory",
                                err.errno, path)
    reason = os.strerror(err.errno).lower() if err.errno else (str(err) or type(err).__name__)
    return OutputWriteError(f"{reason} writing {path}", err.errno, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary sibling path to write a file or directory to; on success it is
    renamed to ``path`` (replacing what was there), on any error it is removed. So an output
    is either complete or absent. Temporaries that killed runs left next to ``path`` are
    removed first (see :func:`_remove_stale_tmps`).

    A failure to write (an :class:`OSError` such as ENOSPC, EDQUOT, EROFS, or EACCES on the
    temporary, the output or its folder; a parent path that is a file) is re-raised as an
    :class:`~xaipipe.errors.OutputWriteError` naming ``path`` and the reason, after the
    temporary is removed. Other errors (e.g. an unreadable input) pass through unchanged."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, path) from e
    _remove_stale_tmps(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {path}")
        if path.exists() or path.is_symlink():
            old = _tmp_sibling(path)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)      # put the previous output back
                raise
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, OutputWriteError) and \
                _concerns_output(e, path, tmp):
            raise write_error(e, path) from e
        raise


def nonfinite_rows(x) -> np.ndarray | torch.Tensor:
    """(N,) bool: which rows of ``x`` (a tensor or array, N leading) hold a NaN or an Inf.
    One ``isfinite`` reduction; a tensor's flags stay on its device (the caller decides when
    to synchronise). Integer and bool inputs are always finite."""
    if isinstance(x, torch.Tensor):
        if not (x.is_floating_point() or x.is_complex()):
            return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        ok = torch.isfinite(x)
        return ~(ok.flatten(1).all(1) if ok.ndim > 1 else ok)
    x = np.asarray(x)
    if x.dtype.kind not in "fc":
        return np.zeros(x.shape[0], bool)
    return ~np.isfinite(x).all(axis=tuple(range(1, x.ndim)))


#: the model's arithmetic: float32, or mixed precision through torch.autocast (an opt-in)
PRECISIONS = ("float32", "bfloat16", "float16")


def autocast(device, precision: str = "float32"):
    """The context a model runs in at ``precision``: nothing for ``float32``; for
    ``bfloat16``/``float16`` ``torch.autocast`` on ``device``'s type (CPU or CUDA), which runs
    convolutions and matrix products in that dtype and keeps reductions, softmax and the
    gradients of float32 leaves in float32. The numerical difference is reported in the
    README (``benchmarks/bench_precision.py``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: not one of {PRECISIONS}")
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type,
                          dtype=getattr(torch, precision))


def full_precision(fn):
    """Run ``fn`` with autocast off on every device: image operators (blurs, the wavelet and
    shearlet transforms) stay in their inputs' dtype when a method runs at mixed precision
    (:func:`autocast` is meant for the model's convolutions and matrix products; under it a
    blurred baseline, a blur pyramid or a wavelet synthesis would be computed in bfloat16 or
    float16 too). Free where no autocast is active."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        active = [d for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]
        if not active:
            return fn(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            for d in active:
                stack.enter_context(torch.autocast(device_type=d, enabled=False))
            return fn(*args, **kwargs)
    return wrapper


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
