"""Reproducible mode: the same numbers on another x86 machine, at a measured cost.

The same config gives byte-identical results twice on one machine anyway. Across machines
the numbers move because the CPU kernels differ: ATen picks AVX2 / AVX-512 code paths by the
CPU it finds, MKL picks its own, oneDNN (mkldnn) convolutions pick algorithms by CPU and
shape, and a reduction split over the job's threads (whose number follows the allocation)
adds in another order. ``reproducible: true`` in the config (or :func:`enable` for API users)
pins all of them:

- ``ATEN_CPU_CAPABILITY=default``: ATen's portable kernels on every x86 CPU;
- ``MKL_CBWR=COMPATIBLE,STRICT``: MKL's conditional numerical reproducibility, the same code
  path on every CPU and the same results whatever the number of threads;
- oneDNN off (``torch.backends.mkldnn.enabled = False``), deterministic algorithms on
  (``torch.use_deterministic_algorithms``; on CUDA also cuDNN deterministic, no benchmark,
  ``CUBLAS_WORKSPACE_CONFIG``). Strict on CPU, where every op the pipeline uses has a
  deterministic kernel (an op without one raises); on CUDA in torch's ``warn_only`` mode,
  because ops our models use have no deterministic CUDA kernel (``adaptive_avg_pool2d``
  backward in VGG/ResNet gradients, ``nll_loss`` in training, bilinear upsampling and
  reflection padding backward) and would raise: they run and warn, and bit identity is not
  promised on CUDA (the documented CPU-vs-GPU tolerance, :data:`TOLERANCE`, is);
- on CUDA no TF32 (``torch.backends.cuda.matmul.allow_tf32`` and
  ``torch.backends.cudnn.allow_tf32`` False): float32 matmuls and convolutions in float32.
  torch's default lets cuDNN convolutions use TF32 on Ampere and later GPUs, which rounds
  their inputs to 10 mantissa bits (up to 2**-11, about 5e-4, relative each), beyond
  :data:`TOLERANCE`;
- torch intra-op threads fixed (``REPRO_THREADS``, 1) instead of following the allocation.

The environment variables are read when torch is imported, so the workflow sets them for its
jobs (the Snakefile, before any job starts; SLURM jobs inherit the submitting environment).
A process that has imported torch already can still call :func:`enable` for the flags, and
:func:`check_environment` says what is missing.

Dask workers of a scheduler the user runs (``score.scheduler: tcp://...``) do not inherit the
job's environment: each score task carries the mode and :func:`enable_worker` applies it on
the worker, which stops with a :class:`~xaipipe.errors.ConfigError` naming the variables of
:data:`STARTUP_ENV` when the worker was started without them (they cannot be set afterwards).

CPU against GPU cannot be bit-identical (other kernels, other summation orders); there the
documented tolerance (:data:`TOLERANCE`) holds and is tested against recorded numbers
(``tests/unit/pipeline/reference/repro.json``, written by ``python -m xaipipe.pipeline.reference --record``).
"""
from __future__ import annotations

import logging
import os
import platform

ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE,STRICT",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    "XAIPIPE_REPRODUCIBLE": "1",
}
#: the variables of :data:`ENV` read when torch and the libraries it loads start (ATen's kernel
#: choice, MKL's code path, cuBLAS's workspace): a worker process must be started with them.
#: ``XAIPIPE_REPRODUCIBLE`` only tells a job process its mode; a score task carries it itself.
STARTUP_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "CUBLAS_WORKSPACE_CONFIG")
REPRO_THREADS = 1
# largest relative difference of the reference numbers between devices (CPU vs CUDA), and
# between CPUs outside reproducible mode
TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}


def requested() -> bool:
    """Whether this process runs in reproducible mode (set by the workflow's environment)."""
    return os.environ.get("XAIPIPE_REPRODUCIBLE") == "1"


def environment() -> dict:
    """The variables to export before torch is imported."""
    return dict(ENV)


def check_environment() -> list[str]:
    """The variables of :data:`ENV` this process does not have (empty: all set)."""
    return [f"{k}={v}" for k, v in ENV.items() if os.environ.get(k) != v]


def missing_startup_environment() -> list[str]:
    """``NAME=value`` of each variable of :data:`STARTUP_ENV` this process lacks; on x86 also
    ``ATEN_CPU_CAPABILITY=default`` when the variable is there but ATen runs other kernels
    (set after torch was imported)."""
    missing = [f"{k}={ENV[k]}" for k in STARTUP_ENV if os.environ.get(k) != ENV[k]]
    aten = f"ATEN_CPU_CAPABILITY={ENV['ATEN_CPU_CAPABILITY']}"
    if aten not in missing and platform.machine().lower() in ("x86_64", "amd64"):
        import torch
        get = getattr(torch.backends.cpu, "get_cpu_capability", None)
        if get is not None and get() != "DEFAULT":
            missing.insert(0, f"{aten} (set after torch was imported: ATen runs its {get()} "
                              "kernels)")
    return missing


def enable_worker(device=None, where: str = "this Dask worker") -> None:
    """Reproducible mode in a worker process that runs a task of a reproducible job:
    :func:`enable`, after checking that the process was started with :data:`STARTUP_ENV`
    (raises :class:`~xaipipe.errors.ConfigError` saying how to start the workers)."""
    missing = missing_startup_environment()
    if missing:
        from .errors import ConfigError
        exports = " ".join(f"{k}={ENV[k]}" for k in STARTUP_ENV)
        raise ConfigError(
            f"reproducible: true, but {where} was started without {', '.join(missing)}: "
            "torch reads these when it is imported, so they cannot be set for a running "
            "worker. Start the workers with them in their environment, e.g. "
            f"`env {exports} dask worker <scheduler address>`, or with dask-jobqueue "
            "SLURMCluster(..., job_script_prologue=[" +
            ", ".join(f"'export {k}={ENV[k]}'" for k in STARTUP_ENV) + "]); "
            "the variables are xaipipe.repro.STARTUP_ENV (values in xaipipe.repro.ENV)")
    enable(device)


def deterministic_warn_only(device=None) -> bool:
    """Whether :func:`enable` on ``device`` (None/``auto``: CUDA when present, else CPU) uses
    torch's ``warn_only`` deterministic mode: on CUDA (module docstring), not on CPU."""
    import torch
    if device is None or str(device) == "auto":
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


_warned_cuda = False


def enable(device=None) -> None:
    """The torch flags of reproducible mode, in this process (the environment variables must
    have been set before torch was imported: :func:`check_environment`). ``device``: where
    the work runs (None/``auto``: CUDA when present, else CPU); on CUDA deterministic
    algorithms are ``warn_only`` (:func:`deterministic_warn_only`) and the ``xaipipe`` logger
    says once that bit identity is not promised there. For the rest of the process: nothing
    restores torch's defaults (a job process runs in one mode)."""
    global _warned_cuda
    import torch
    warn_only = deterministic_warn_only(device)
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    if warn_only and not _warned_cuda:
        _warned_cuda = True
        logging.getLogger("xaipipe").warning(
            "reproducible mode on CUDA: deterministic algorithms warn_only (some CUDA ops have "
            "no deterministic kernel); bit identity is not promised on CUDA, only the "
            "documented tolerance (xaipipe.repro.TOLERANCE: rtol %g, atol %g)",
            TOLERANCE["rtol"], TOLERANCE["atol"])
    torch.backends.mkldnn.enabled = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False     # settable and readable without CUDA
    torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(REPRO_THREADS)
