#!/usr/bin/env bash
# One-go GPU check of the Triton backend (written without a GPU; meant to work first time on one).
#
#   1. the Triton tests on the real GPU (compiled kernels; the CPU interpreter run comes along)
#   2. the 50-epoch MNIST training loop, data resident on the GPU (scripts/mnist_timing.py)
#   3. python scripts/benchmark.py (the op benchmark), if present
#   4. python train.py experiment=paper_mnist trainer=gpu (GPU_CHECK_TRAIN_EPOCHS epochs, default 2)
#   5. one checkpoint evaluated on 1 GPU and, with 2+ GPUs, under a 2-process trainer=ddp training run and
#      eval.py trainer=ddp: identical test metrics (scripts/ddp_eval_check.py)
#
# Every step's log and the timing JSON go to $OUT (default outputs/gpu_check, git-ignored). Steps run
# even when an earlier one fails; the exit status is non-zero if any failed. The package need not be
# installed: src/ is put on PYTHONPATH (the GPU image has torch and triton but not this project).
#
# MNIST: read from $UGMM_DATA_DIR (torchvision layout, default ../shared/data). A GPU machine that
# only receives the repository gets it as gzip files carried along in data/gpu_check (git-ignored):
#
#   bash scripts/gpu_check.sh --pack-data        # here, once: ~11 MB of .gz under data/gpu_check
#   bash scripts/gpu_check.sh                    # there, with data/gpu_check carried along
#
# Options (environment): GPU_CHECK_EPOCHS (50), GPU_CHECK_STEP_TIMEOUT (seconds per step, 180: the three
# steps fit one 10-minute device call), GPU_CHECK_SKIP ("tests", "mnist" and/or "benchmark",
# space-separated; also "train" and "ddp"), GPU_CHECK_MNIST_ARGS (extra arguments of mnist_timing.py). CPU smoke run:
#
#   GPU_CHECK_EPOCHS=1 GPU_CHECK_MNIST_ARGS="--device cpu --limit 512 --backend reference" \
#       GPU_CHECK_SKIP=benchmark bash scripts/gpu_check.sh
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
PACKED="$REPO/data/gpu_check/MNIST/raw"
FILES="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"

if [[ "${1:-}" == "--pack-data" ]]; then
    src="${UGMM_DATA_DIR:-$REPO/../shared/data}/MNIST/raw"
    mkdir -p "$PACKED"
    for f in $FILES; do gzip -c "$src/$f" > "$PACKED/$f.gz" || exit 1; done
    du -sh "$PACKED"
    exit 0
fi

OUT_DIR="${OUT:-$REPO/outputs/gpu_check}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
STEP_TIMEOUT="${GPU_CHECK_STEP_TIMEOUT:-180}"
SKIP=" ${GPU_CHECK_SKIP:-} "
status=0
summary=()

run_step() {  # run_step NAME CMD...: log to $OUT_DIR/NAME.log, record the exit status
    local name="$1"; shift
    if [[ "$SKIP" == *" $name "* ]]; then summary+=("$name: skipped"); return; fi
    echo "=== $name: $*"
    local t0=$SECONDS
    timeout "$STEP_TIMEOUT" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    local rc=${PIPESTATUS[0]}
    summary+=("$name: exit $rc in $((SECONDS - t0)) s")
    [[ $rc -eq 0 ]] || status=1
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "no nvidia-smi"
    "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT_DIR/env.log"

# 1. correctness on the GPU: every test in the file runs on CUDA when it is present
run_step tests "$PY" -m pytest tests/test_ops_triton.py -q -p no:cacheprovider -ra

# 2. the paper's 50-epoch MNIST loop, data on the GPU
if [[ -z "${UGMM_DATA_DIR:-}" && ! -e "$REPO/../shared/data/MNIST/raw/train-images-idx3-ubyte" && -d "$PACKED" ]]; then
    export UGMM_DATA_DIR="${TMPDIR:-/tmp}/ugmm_gpu_check_data"
    mkdir -p "$UGMM_DATA_DIR/MNIST/raw"
    for f in $FILES; do gunzip -c "$PACKED/$f.gz" > "$UGMM_DATA_DIR/MNIST/raw/$f"; done
fi
# shellcheck disable=SC2086  # GPU_CHECK_MNIST_ARGS is a list of words
run_step mnist "$PY" scripts/mnist_timing.py --epochs "${GPU_CHECK_EPOCHS:-50}" --out "$OUT_DIR/mnist_timing.json" \
    ${GPU_CHECK_MNIST_ARGS:-}

# 3. the op benchmark (written alongside the fused CPU backend)
if [[ -f scripts/benchmark.py ]]; then
    run_step benchmark "$PY" scripts/benchmark.py
else
    summary+=("benchmark: scripts/benchmark.py not found")
fi

# 4. the real command on one GPU
run_step train "$PY" train.py experiment=paper_mnist trainer=gpu "trainer.max_epochs=${GPU_CHECK_TRAIN_EPOCHS:-2}" \
    logger=none "paths.log_dir=$OUT_DIR/logs" trainer.enable_progress_bar=false callbacks.rich_progress_bar=null

# 5. exact evaluation: one checkpoint, the same test metrics on 1 GPU and under DDP
n_gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [[ "$n_gpus" -ge 2 ]]; then
    run_step ddp "$PY" scripts/ddp_eval_check.py --train "trainer=ddp trainer.devices=2" \
        --eval trainer=gpu "trainer=ddp trainer.devices=2"
else
    run_step ddp "$PY" scripts/ddp_eval_check.py --train trainer=gpu --eval trainer=gpu "trainer=ddp_cpu"
fi

printf '%s\n' "${summary[@]}" | tee "$OUT_DIR/summary.txt"
exit $status
