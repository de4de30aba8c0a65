# Sourced by the GPU scripts (benchmarks/gpu_session.sh, benchmarks/gpu_checks.sh) on the lent
# machine, repository root as cwd: $OUT ready, zarr's wheels from .whl/ installed (the image
# has none), PYTHONPATH set, and the card, driver and versions written to $OUT/env.txt.
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
