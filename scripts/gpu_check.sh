#!/usr/bin/env bash
# One command for a borrowed GPU: everything minibnn checks on a GPU, in one run, into one folder.
#
#     bash scripts/gpu_check.sh [--dry-run] [OUTDIR]      # OUTDIR: default $OUT, else gpu-check/
#
# Steps, in this order, so that a run cut short still reports what it reached (each step has
# its own time limit; the whole is under 7 minutes on an H100):
#   env        the GPU (nvidia-smi), Python, NumPy, CuPy, Numba versions
#   build      every CUDA kernel compiled with NVRTC for sm_80 and sm_90: registers, spills
#   gpu-tests  pytest -m gpu: every CUDA body against its reference, models GPU vs CPU, and no
#              host read inside a training step (cupyx.allow_synchronize(False))
#   verify     the equivalence suite P1-P9, whose implementations include fused[cuda] on a GPU
#              (P9's closed loop included)
#   bench      benchmarks/bench_gpu.py: training step vs the reference bodies, fused optimiser
#              steps vs a device copy, XNOR GEMM vs cuBLAS SGEMM (JSON in OUTDIR)
#   mnist      a short `minibnn train --device gpu` on MNIST and the same run on the CPU
#   cifar10    the same on CIFAR-10 from ../shared/datasets/ (binary_cnn)
#
# --dry-run runs the same steps on the CPU: each GPU part says "skipped: no GPU", the CPU halves
# of the training comparisons run (tiny), so the script's own plumbing is tested in CI.
# Data: MNIST from $MINIBNN_CACHE, else .gpu-data/mnist.npz, else the synthetic set; CIFAR-10
# from $CIFAR10_DIR, else .gpu-data/cifar10-jpeg.tar.gz or ../shared/datasets/. .gpu-data/ is an
# ignored folder made to travel with the tree to a borrowed GPU machine (31 MB):
#     mkdir -p .gpu-data && cp ~/.cache/minibnn/mnist.npz ../shared/datasets/cifar10-jpeg.tar.gz .gpu-data/
#     device run: command 'bash scripts/gpu_check.sh "$OUT"', carry [".gpu-data"], timeout_s 480
# Output, two files (a borrowed machine returns at most 8): OUTDIR/summary.txt, one line per
# step (name, ok / failed (rc N) / timed out / skipped: why, seconds), and OUTDIR/details.tar.gz,
# every step's output (refreshed after each step, so a run cut short still returns them).
# The whole run keeps to a budget ($GPU_CHECK_BUDGET_S, default 400 s): each step's limit is cut
# to the time left, and steps past the budget are skipped, saying so.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUTDIR="${OUT:-gpu-check}"
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $arg (expected --dry-run or an output folder)" >&2
            exit 2 ;;
        *) OUTDIR="$arg" ;;
    esac
done
mkdir -p "$OUTDIR" || { echo "gpu_check.sh: cannot create $OUTDIR" >&2; exit 2; }
OUTDIR="$(cd "$OUTDIR" && pwd)"
PY="${PYTHON:-python3}"
SUMMARY="$OUTDIR/summary.txt"
: > "$SUMMARY"
WORK="$(mktemp -d)"                  # the steps' outputs; packed into OUTDIR/details.tar.gz
trap 'rm -rf "$WORK"' EXIT
BUDGET="${GPU_CHECK_BUDGET_S:-400}"
T0=$(date +%s)

# Is there a GPU minibnn can use? On a real run, "no" is a failure said in the summary (the
# machine was lent for its GPU): the CPU steps still run, and the script exits 1.
GPU_PROBE="import sys; from minibnn.backend import gpu_available; import cupy
if not gpu_available(): sys.exit('no usable CUDA device: ' + str(cupy.cuda.runtime.getDeviceCount()))"
HAS_GPU=0
PROBE_ERROR=""
if [ "$DRY" = 0 ]; then
    if PROBE_OUT=$(timeout -k 5 60 "$PY" -c "$GPU_PROBE" 2>&1); then
        HAS_GPU=1
    else
        PROBE_ERROR=$(printf '%s' "$PROBE_OUT" | tail -n 1)
        PROBE_ERROR=${PROBE_ERROR:-the GPU probe failed}
    fi
fi

note() {     # note NAME STATUS SECONDS: one summary line (and the same on the terminal)
    printf '%-11s %-28s %4ss\n' "$1" "$2" "$3" | tee -a "$SUMMARY"
    tar czf "$OUTDIR/details.tar.gz" -C "$WORK" --exclude='*.h5' . 2>/dev/null
}

step() {     # step NAME LIMIT_S COMMAND...: run it, output in WORK/NAME.txt, one summary line
    local name=$1 limit=$2 start rc status left
    shift 2
    start=$(date +%s)
    left=$(( BUDGET - (start - T0) ))
    if [ "$left" -lt 10 ]; then
        skip "$name" "over the ${BUDGET}s budget"
        return
    fi
    if [ "$limit" -gt "$left" ]; then limit=$left; fi
    # SIGTERM at the limit, SIGKILL 10 s later if the step ignores it (a call stuck on the GPU)
    timeout -k 10 "$limit" bash -c '"$@"' "$name" "$@" > "$WORK/$name.txt" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124) status="timed out after ${limit}s" ;;
        137) status="killed (rc 137: past the limit, or out of memory)" ;;
        *) status="failed (rc $rc)" ;;
    esac
    note "$name" "$status" "$(( $(date +%s) - start ))"
}

skip() {     # skip NAME WHY
    echo "skipped: $2" > "$WORK/$1.txt"
    note "$1" "skipped: $2" 0
}

env_report() {
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" - <<'EOF'
import platform
import numpy
print("python", platform.python_version(), "numpy", numpy.__version__)
for name in ("cupy", "numba", "torch"):
    try:
        module = __import__(name)
        print(name, module.__version__)
    except Exception as exc:
        print(name, "absent:", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
from minibnn.backend import gpu_available
print("gpu_available", gpu_available())
EOF
}

# train DATASET DEVICE OUTFILE ARGS...: one short run; prints its last epoch line
train_run() {
    local device=$1 out=$2
    shift 2
    "$PY" -m minibnn train --device "$device" --out "$out" --no-progress --epochs 1 "$@"
}

export PY
export -f env_report train_run

# compare NAME LIMIT ARGS...: the same short run on the GPU (if any) and on the CPU; the GPU
# run goes first and gets LIMIT seconds (it may decode the data set into the cache)
compare() {
    local name=$1 limit=$2
    shift 2
    if [ "$HAS_GPU" = 1 ]; then
        step "$name-gpu" "$limit" train_run gpu "$WORK/$name-gpu.h5" "$@"
    else
        skip "$name-gpu" "no GPU"
    fi
    step "$name-cpu" 60 train_run cpu "$WORK/$name-cpu.h5" "$@"
    { echo "gpu:"; tail -n 2 "$WORK/$name-gpu.txt"; echo "cpu:"; tail -n 2 "$WORK/$name-cpu.txt"
    } >> "$SUMMARY" 2>/dev/null
}

if [ -n "$PROBE_ERROR" ]; then
    echo "gpu        failed: no usable GPU on a real run ($PROBE_ERROR); GPU steps skipped" \
        | tee -a "$SUMMARY"
fi
step env 20 env_report

if timeout -k 5 60 "$PY" -c "from minibnn.kernels.cuda_build import nvrtc; nvrtc()" 2>/dev/null; then
    step build 40 "$PY" -m minibnn.kernels.cuda_build
else
    skip build "no NVRTC (pip install 'minibnn[gpu-build]')"
fi

if [ "$HAS_GPU" = 1 ]; then
    step gpu-tests 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider \
        --junitxml="$WORK/gpu-tests.xml" tests/
    step verify 90 "$PY" -m minibnn verify --only P1,P2,P3,P4,P5,P6,P7,P8,P9
    step bench 90 "$PY" benchmarks/bench_gpu.py --repeats 3 --json "$WORK/bench_gpu.json"
else
    # the GPU tests collect and skip (the markers and skip reasons work); the rest needs a GPU
    step gpu-tests 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py \
        tests/test_host_reads.py
    skip verify "no GPU"
    skip bench "no GPU"
fi

# MNIST: the cache that travelled with the tree, else the synthetic set (said in the output)
if [ -z "${MINIBNN_CACHE:-}" ] && [ -f .gpu-data/mnist.npz ]; then
    export MINIBNN_CACHE="$PWD/.gpu-data"
fi
if [ -f "${MINIBNN_CACHE:-${HOME:-/nonexistent}/.cache/minibnn}/mnist.npz" ]; then
    MNIST=(--dataset mnist)
else
    echo "no MNIST cache: the mnist step trains on the synthetic set" >> "$SUMMARY"
    MNIST=(--dataset synthetic)
fi
if [ "$HAS_GPU" = 1 ]; then SUBSET=10000; else SUBSET=500; fi
compare mnist 60 "${MNIST[@]}" --train-subset "$SUBSET" --batch-size 100

CIFAR="${CIFAR10_DIR:-}"
for candidate in .gpu-data/cifar10-jpeg.tar.gz ../shared/datasets/cifar10-jpeg.tar.gz; do
    if [ -z "$CIFAR" ] && [ -e "$candidate" ]; then CIFAR="$candidate"; fi
done
if [ -z "$CIFAR" ]; then
    skip cifar10-gpu "no CIFAR-10 copy (set CIFAR10_DIR)"
    skip cifar10-cpu "no CIFAR-10 copy (set CIFAR10_DIR)"
elif [ "$HAS_GPU" = 1 ]; then
    compare cifar10 150 --model binary_cnn --width 16 --dataset cifar10 --data-dir "$CIFAR" \
        --train-subset 5000 --batch-size 100
else
    skip cifar10-gpu "no GPU"
    skip cifar10-cpu "no GPU (decoding CIFAR-10 is left to a GPU run)"
fi

echo "gpu_check: done in $(( $(date +%s) - T0 ))s; summary in $SUMMARY, step outputs in $OUTDIR/details.tar.gz"
# exit status: 1 if any step failed, timed out or was killed, or a real run found no GPU
# (skips are not failures)
! grep -qE '^\S+ +(failed|timed out|killed)' "$SUMMARY"
