"""TensorRT engines built from the exported ONNX file (GPU machines only).

``tensorrt`` is imported lazily: it is an optional extra (``pip install 'stainbench[tensorrt]'``
on a Linux machine with an NVIDIA GPU). Without it, or without a CUDA GPU,
:func:`require_tensorrt` raises a one-line :class:`~stainbench.errors.ExportError` before any
work is done.

:func:`build_engine` parses ``model.onnx`` (uint8 ``INPUT`` ``(B, H, W, 3)``), adds one
optimization profile (min/opt/max batch and square tile side from the profile), builds an
fp32 or fp16 engine with a persistent timing cache, and returns the serialized plan.
:func:`trt_parity` runs the engine on the same tiles as ONNX Runtime (fp32 on the CPU) and
reports max and mean grey-level error; for fp16, a failing engine is rebuilt once with the
normalization layers (and the reductions before them) pinned to fp32.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stainbench.errors import ExportError
from stainbench.export.onnx import INPUT_NAME, OUTPUT_NAME, OnnxTileModel
from stainbench.export.profile import TensorRTSettings

#: ONNX/TensorRT layer types kept in fp32 by the fp16 fallback (normalization + reductions).
NORM_LAYER_HINTS = ("InstanceNormalization", "BatchNormalization", "Normalization", "Reduce")


def tensorrt_status() -> str | None:
    """None when TensorRT can build engines here, else the one-line reason why not."""
    if importlib.util.find_spec("tensorrt") is None:
        return (
            "TensorRT is not installed (pip install 'stainbench[tensorrt]' on a Linux machine "
            "with an NVIDIA GPU); use --profile export/cpu.yaml or export/onnxruntime.yaml here"
        )
    try:
        import torch

        if not torch.cuda.is_available():
            return "TensorRT needs a CUDA GPU and none is visible on this machine"
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return "TensorRT parity needs torch with CUDA"
    return None


def require_tensorrt() -> Any:
    """The imported ``tensorrt`` module, or :class:`ExportError` saying why it cannot run."""
    reason = tensorrt_status()
    if reason is not None:
        raise ExportError(reason)
    import tensorrt as trt

    return trt


@dataclass(frozen=True)
class EngineInfo:
    """What was built: precision, profile shapes, norm layers pinned to fp32, versions."""

    precision: str
    min_shape: tuple[int, int, int, int]
    opt_shape: tuple[int, int, int, int]
    max_shape: tuple[int, int, int, int]
    fp32_layers: tuple[str, ...]
    tensorrt_version: str
    gpu: str
    compute_capability: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shapes(s: TensorRTSettings, multiple: int) -> tuple[tuple[int, int, int, int], ...]:
    for side in (s.min_tile, s.opt_tile, s.max_tile):
        if side % multiple:
            raise ExportError(
                f"tensorrt tile sizes must be multiples of the model's size multiple {multiple}, "
                f"got {side} (fix tensorrt.min_tile/opt_tile/max_tile in the profile)"
            )
    return (
        (s.min_batch, s.min_tile, s.min_tile, 3),
        (s.opt_batch, s.opt_tile, s.opt_tile, 3),
        (s.max_batch, s.max_tile, s.max_tile, 3),
    )


def build_engine(
    onnx_path: str | Path,
    settings: TensorRTSettings,
    size_multiple: int,
    *,
    fp32_norm: bool = False,
) -> tuple[bytes, EngineInfo]:
    """Serialized TensorRT engine for ``onnx_path`` and what was built.

    ``fp32_norm``: pin normalization/reduction layers to fp32 (fp16 engines only).
    """
    trt = require_tensorrt()
    import torch

    shapes = _shapes(settings, size_multiple)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if hasattr(trt, "OnnxParserFlag") and hasattr(trt.OnnxParserFlag, "NATIVE_INSTANCENORM"):
        parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT cannot parse {onnx_path}: {errors[0] if errors else '?'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *shapes)
    config.add_optimization_profile(profile)

    cache_path = Path(settings.timing_cache) if settings.timing_cache else None
    cache_blob = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, ignore_mismatch=False)

    pinned: list[str] = []
    if settings.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        if fp32_norm:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                kind = str(layer.type)
                if any(h.lower() in (layer.name + kind).lower() for h in NORM_LAYER_HINTS):
                    layer.precision = trt.float32
                    for j in range(layer.num_outputs):
                        layer.set_output_type(j, trt.float32)
                    pinned.append(layer.name)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT engine build failed for {onnx_path} (see the log above)")
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    props = torch.cuda.get_device_properties(0)
    info = EngineInfo(
        precision=settings.precision,
        min_shape=shapes[0],
        opt_shape=shapes[1],
        max_shape=shapes[2],
        fp32_layers=tuple(pinned),
        tensorrt_version=str(trt.__version__),
        gpu=str(props.name),
        compute_capability=f"{props.major}.{props.minor}",
    )
    return bytes(plan), info


def run_engine(plan: bytes, tiles: np.ndarray) -> np.ndarray:
    """Run a serialized engine on uint8 ``(B, H, W, 3)`` tiles; uint8 ``(B, H, W, 3)`` out."""
    trt = require_tensorrt()
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise ExportError("TensorRT could not deserialize the engine it just built")
    context = engine.create_execution_context()
    x = torch.from_numpy(np.ascontiguousarray(tiles)).cuda()
    context.set_input_shape(INPUT_NAME, tuple(x.shape))
    y = torch.empty(tuple(context.get_tensor_shape(OUTPUT_NAME)), dtype=torch.uint8, device="cuda")
    context.set_tensor_address(INPUT_NAME, x.data_ptr())
    context.set_tensor_address(OUTPUT_NAME, y.data_ptr())
    stream = torch.cuda.Stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise ExportError("TensorRT inference failed")
    stream.synchronize()
    return y.cpu().numpy()


@dataclass(frozen=True)
class TrtParity:
    """TensorRT vs ONNX Runtime (fp32, CPU) on the same tiles, grey levels."""

    precision: str
    max_error: float
    mean_error: float
    max_limit: float
    mean_limit: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trt_parity(
    plan: bytes, reference: OnnxTileModel, tiles: np.ndarray, settings: TensorRTSettings
) -> TrtParity:
    """Compare the engine's uint8 output with ONNX Runtime's on ``tiles``."""
    ref = reference.run(tiles).astype(np.float64)
    got = run_engine(plan, tiles).astype(np.float64)
    err = np.abs(got - ref)
    if settings.precision == "fp16":
        max_limit, mean_limit = settings.fp16_max_atol, settings.fp16_mean_atol
    else:
        max_limit, mean_limit = settings.fp32_atol, settings.fp32_atol
    max_e, mean_e = float(err.max()), float(err.mean())
    return TrtParity(
        settings.precision,
        max_e,
        mean_e,
        max_limit,
        mean_limit,
        max_e <= max_limit and mean_e <= mean_limit,
    )


def build_checked_engine(
    onnx_path: Path, reference: OnnxTileModel, tiles: np.ndarray, settings: TensorRTSettings
) -> tuple[bytes, EngineInfo, TrtParity]:
    """Build, gate, and (fp16 only, once) rebuild with fp32 normalization layers if needed.

    ``tiles`` must fit the profile (batch <= max_batch, side within min/max tile).
    """
    plan, info = build_engine(onnx_path, settings, reference.size_multiple)
    parity = trt_parity(plan, reference, tiles, settings)
    if not parity.passed and settings.precision == "fp16" and settings.fp32_norm_fallback:
        plan, info = build_engine(onnx_path, settings, reference.size_multiple, fp32_norm=True)
        parity = trt_parity(plan, reference, tiles, settings)
    if not parity.passed:
        raise ExportError(
            f"TensorRT {settings.precision} parity gate failed: max error {parity.max_error:.2f} "
            f"(limit {parity.max_limit}), mean {parity.mean_error:.3f} (limit "
            f"{parity.mean_limit}) grey levels vs ONNX Runtime; nothing was written"
        )
    return plan, info, parity
