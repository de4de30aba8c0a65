#!/usr/bin/env bash
# One prepared run on a lent GPU machine (the `device` tool), repository root as cwd, $OUT the
# folder whose files come back. That machine's image has Python 3.12 with a CUDA torch but no
# zarr: its wheels travel in .whl/ (see docs/benchmarks/train_gpu.md for how they were fetched).
#   1. the card, the driver, the versions;
#   2. benchmarks/train_throughput_gpu.py: training throughput per family at 256x256
#      (fp32 / tf32 / bf16, batch 1 and 16, channels_last off and on);
#   3. benchmarks/demo_longer_training.py: the demo recipes trained longer (time-boxed).
# Each step has its own time limit and the next runs even if one fails.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import sys, torch, numpy, zarr; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version()); print('numpy', numpy.__version__, 'zarr', zarr.__version__)"
    nproc
} 2>&1 | tee "$OUT/env.txt"

timeout "${THROUGHPUT_S:-180}" python3 benchmarks/train_throughput_gpu.py \
    --iters 6 --warmup 2 --out "$OUT/train_gpu.md" --json "$OUT/train_gpu.json" 2>&1 | tee "$OUT/throughput.log"

timeout "${LONGER_S:-380}" python3 benchmarks/demo_longer_training.py \
    --out-dir /tmp/longer --budget-s "${BUDGET_S:-70}" --device cuda --workers 6 \
    2>&1 | tee "$OUT/longer.log"
cp /tmp/longer/longer_training.json "$OUT/" 2>/dev/null
date -u | tee -a "$OUT/env.txt"
