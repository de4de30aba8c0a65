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
source benchmarks/gpu_env.sh  # $OUT, the zarr wheels, PYTHONPATH, $OUT/env.txt

timeout "${THROUGHPUT_S:-180}" python3 benchmarks/train_throughput_gpu.py \
    --iters 6 --warmup 2 --out "$OUT/train_gpu.md" --json "$OUT/train_gpu.json" 2>&1 | tee "$OUT/throughput.log"

timeout "${LONGER_S:-380}" python3 benchmarks/demo_longer_training.py \
    --out-dir /tmp/longer --budget-s "${BUDGET_S:-70}" --device cuda --workers 6 \
    2>&1 | tee "$OUT/longer.log"
cp /tmp/longer/longer_training.json "$OUT/" 2>/dev/null
date -u | tee -a "$OUT/env.txt"
