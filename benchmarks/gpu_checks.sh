#!/usr/bin/env bash
# One prepared run on a lent GPU machine (the `device` tool), repository root as cwd, $OUT the
# folder whose files come back. The machine's image has Python 3.12 with a CUDA torch but no
# zarr: its wheels travel in .whl/ (docs/benchmarks/train_gpu.md says how they were fetched).
#   1. the card, the driver, the versions;
#   2. the tests marked `gpu` (CUDA training of each family in fp32 and bf16, the models'
#      CPU-only fast paths against CUDA's kernels, batch normalization on the device);
#   3. benchmarks/train_throughput_gpu.py at 256x256 (fp32 / tf32 / bf16, batch 1 and 16,
#      channels_last off), to compare with the second session's table.
# Each step has its own time limit and the next runs even if one fails.
set -u
source benchmarks/gpu_env.sh  # $OUT, the zarr wheels, PYTHONPATH, $OUT/env.txt

timeout "${TESTS_S:-240}" python3 -m pytest -m gpu -p no:cacheprovider -q -rs \
    tests/models/test_models_cuda.py tests/training/test_fit_families.py \
    tests/data/test_data_normalize_device.py 2>&1 | tee "$OUT/gpu_tests.log"

timeout "${THROUGHPUT_S:-200}" python3 benchmarks/train_throughput_gpu.py \
    --channels-last off --iters 6 --warmup 2 \
    --out "$OUT/train_gpu.md" --json "$OUT/train_gpu.json" 2>&1 | tee "$OUT/throughput.log"
date -u | tee -a "$OUT/env.txt"
