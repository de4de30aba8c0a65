"""TensorRT engines (run only where tensorrt and a CUDA GPU exist; skipped here by conftest)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from stainbench.errors import ExportError
from stainbench.export.exporter import export_checkpoint
from stainbench.export.profile import (
    ExportProfile,
    ParitySettings,
    TensorRTSettings,
    TritonSettings,
)
from stainbench.export.tensorrt import require_tensorrt, tensorrt_status


def _profile(precision: str, cache: Path) -> ExportProfile:
    return ExportProfile(
        flavour="tensorrt",
        triton=TritonSettings(instance_kind="KIND_GPU", warmup_tile=32, max_batch_size=4),
        parity=ParitySettings(tile=32, val_tiles=2),
        tensorrt=TensorRTSettings(
            precision=precision,  # type: ignore[arg-type]
            min_batch=1,
            opt_batch=2,
            max_batch=4,
            min_tile=16,
            opt_tile=32,
            max_tile=64,
            workspace_mib=512,
            timing_cache=str(cache),
        ),
    )


def test_missing_tensorrt_is_one_clear_line() -> None:
    reason = tensorrt_status()
    if importlib.util.find_spec("tensorrt") is None:
        assert reason is not None and "TensorRT is not installed" in reason
        with pytest.raises(ExportError, match="TensorRT is not installed"):
            require_tensorrt()
    elif reason is not None:
        assert "GPU" in reason


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_export_and_parity(
    precision: str, tmp_path: Path, checkpoint_factory, demo_store: Path
) -> None:
    ckpt = checkpoint_factory("cyclegan", store=str(demo_store))
    cache = tmp_path / "timing.cache"
    result = export_checkpoint(ckpt, tmp_path / "repo", _profile(precision, cache))
    assert (result.version_dir / "model.plan").stat().st_size > 0
    assert cache.is_file() and cache.stat().st_size > 0
    trt = result.manifest["tensorrt"]
    assert trt["parity"]["passed"] and trt["engine"]["precision"] == precision
    assert list(trt["engine"]["max_shape"]) == [4, 64, 64, 3]
    from stainbench.export.tensorrt import run_engine

    plan = (result.version_dir / "model.plan").read_bytes()
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    y = run_engine(plan, x)
    assert y.dtype == np.uint8 and y.shape == x.shape
    cfg = (result.model_dir / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in cfg and "KIND_GPU" in cfg
