#!/usr/bin/env bash
# The GPU check: the CUDA cases of the tests and the GPU benchmarks in one command
# (CONTRIBUTING.md, "Environment"). On a machine with a CUDA GPU:
#
#   bash benchmarks/gpu_check.sh
#
# python3 there must hold torch; the packages it lacks are installed from wheels in the
# ignored folder .whl (`make gpu-wheels` downloads them), or set WHEELS=none when that
# Python has xaipipe's dependencies already. The benchmarks use the demo model trained by
# `make demo` when results/models/ holds it (random weights otherwise).
#
# To try the script itself on CPU (every CUDA case skips, short settings):
#
#   PY=.venv/bin/python WHEELS=none QUICK=1 OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
#
# Each step has its own time limit (together 9.4 min at most), so that one slow step cannot
# eat the others; everything printed goes to $OUT/gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
: > "$LOG"
PY=${PY:-python3}
QUICK=${QUICK:-0}
export PYTHONUNBUFFERED=1

if [ "${WHEELS:-.whl}" != none ]; then
    if ! ls .whl/*.whl > /dev/null 2>&1; then
        echo "no wheels in .whl: run 'make gpu-wheels' here and carry .whl" | tee -a "$LOG"
        exit 2
    fi
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG" || exit 2
    export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks
else
    export PYTHONPATH=$PWD/src:$PWD/benchmarks
fi

step() {            # step SECONDS CMD...: run with a limit, log it, never stop the script
    local limit=$1; shift
    echo "=== $(date +%T) [limit ${limit}s] $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | grep -v "^WARNING: Location" | tee -a "$LOG"
    echo "=== rc=${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$LOG"
}

if [ "$QUICK" = 1 ]; then
    IG="--images 4 --steps 8 --repeats 1"; INS="--images 4 --repeats 1"
    MASK="--size 64 --samples 2 --batch 2 --repeats 1"; REP="--repeats 1"
else
    IG="--images 32 --steps 64 --repeats 5"; INS="--images 64 --repeats 5"
    MASK="--size 256 --samples 16 --batch 16 --repeats 3"; REP="--repeats 3"
fi

step 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step 60 $PY -c "import torch, xaipipe, zarr, dask, pywt, pyshearlab_mind, captum; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name() if torch.cuda.is_available() else '-')"
# the CUDA cases: every method and metric on CUDA (contract), mixed precision, the
# reproducibility tolerance on CUDA
step 150 $PY -m pytest -q -ra -p no:cacheprovider \
    tests/unit/explain/test_contract.py tests/unit/metrics/test_metrics.py tests/unit/pipeline/test_precision.py tests/unit/pipeline/test_repro.py \
    tests/unit/explain/test_masks.py -k "cuda or tensors_of_any_kind"
# IG and insertion throughput against the model's own limits
step 60 $PY benchmarks/bench_ig.py --model resnet18 $IG
step 45 $PY benchmarks/bench_ig.py --model demo $IG
step 45 $PY benchmarks/bench_insertion.py --model resnet18 $INS
step 45 $PY benchmarks/bench_precision.py $REP
# the mask step against the model (target <= 1.3x) and batching (target >= 4x per image)
step 45 $PY benchmarks/bench_transforms.py $REP
step 90 $PY benchmarks/bench_masks.py --parts 1,2 --model resnet18 $MASK
step 45 $PY benchmarks/bench_masks.py --parts 1 --model mobilenet_v3_small $MASK
echo "=== done $(date +%T)" | tee -a "$LOG"
