"""Export profiles (``export/*.yaml``): which flavour of served model to write, and how.

A profile is a typed config loaded with :func:`stainbench.config.from_dict`; unknown keys and
wrong types are one-line :class:`~stainbench.errors.ConfigError` messages naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from stainbench.config import from_dict, load_yaml
from stainbench.errors import ConfigError

#: The three flavours of the same served model (docs/CONTRACTS.md section 3).
Flavour = Literal["python", "onnxruntime", "tensorrt"]


@dataclass(frozen=True)
class TritonSettings:
    """Scheduling settings written into ``config.pbtxt``.

    ``max_queue_delay_us``: how long (microseconds) the dynamic batcher may hold a request to
    form a larger batch. 0 by default: on a CPU a batcher delay only adds latency (measured in
    docs/benchmarks/serving.md); the GPU profiles set a small delay.
    ``intra_op_threads``: ONNX Runtime threads per instance for the python flavour; 0 means
    ``cores // instance_count`` (at least 1), decided by ``model.py`` on the serving machine.
    """

    max_batch_size: int = 8
    dynamic_batching: bool = True
    max_queue_delay_us: int = 0
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU"
    instance_count: int = 1
    intra_op_threads: int = 0
    warmup: bool = True
    warmup_tile: int = 256
    warmup_batch_size: int = 1
    version_policy: Literal["latest", "all"] = "latest"
    num_versions: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1 (the contract needs a batch dimension)")
        if self.max_queue_delay_us < 0:
            raise ValueError("max_queue_delay_us must be >= 0")
        if self.instance_count < 1:
            raise ValueError("instance_count must be >= 1")
        if self.intra_op_threads < 0:
            raise ValueError("intra_op_threads must be >= 0 (0 = cores / instances)")
        if self.warmup_tile < 1 or not 1 <= self.warmup_batch_size <= self.max_batch_size:
            raise ValueError("need warmup_tile >= 1 and 1 <= warmup_batch_size <= max_batch_size")
        if self.num_versions < 1:
            raise ValueError("num_versions must be >= 1")


@dataclass(frozen=True)
class ParitySettings:
    """The parity gate: ONNX Runtime must reproduce PyTorch, or nothing is written.

    ``float_rtol``: max |ORT - torch| / max |torch| on the de-normalized float output (pixel
    units, before rounding). ``uint8_atol``: max grey-level difference of the uint8 output.
    ``val_tiles`` real tiles from the checkpoint's validation split (fewer when the store has
    fewer; none when the store cannot be opened, which the manifest records) and
    ``random_tiles`` uniform random tiles, all ``tile`` x ``tile`` pixels.
    """

    val_tiles: int = 4
    random_tiles: int = 2
    tile: int = 256
    batch: int = 3
    float_rtol: float = 1e-4
    uint8_atol: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.val_tiles < 0 or self.random_tiles < 0 or self.val_tiles + self.random_tiles < 1:
            raise ValueError("val_tiles + random_tiles must be >= 1")
        if self.batch < 2:
            raise ValueError("batch must be >= 2 (batch independence needs different tiles)")
        if self.tile < 1 or self.float_rtol <= 0 or self.uint8_atol < 0:
            raise ValueError("tile >= 1, float_rtol > 0 and uint8_atol >= 0 are required")


@dataclass(frozen=True)
class TensorRTSettings:
    """TensorRT engine build (flavour ``tensorrt`` only).

    One optimization profile: batch ``min_batch``/``opt_batch``/``max_batch`` and square tile
    sizes ``min_tile``/``opt_tile``/``max_tile`` (pixels, multiples of the model's size
    multiple). ``workspace_mib``: builder memory pool. ``timing_cache``: file reused across
    builds (empty: none). fp16 tolerances are in grey levels on the uint8 output against ONNX
    Runtime fp32; ``fp32_norm_fallback`` rebuilds with normalization layers pinned to fp32
    when fp16 fails them.
    """

    precision: Literal["fp32", "fp16"] = "fp16"
    min_batch: int = 1
    opt_batch: int = 4
    max_batch: int = 8
    min_tile: int = 256
    opt_tile: int = 256
    max_tile: int = 512
    workspace_mib: int = 2048
    timing_cache: str = "export/trt_timing.cache"
    fp32_atol: float = 1.0
    fp16_max_atol: float = 8.0
    fp16_mean_atol: float = 1.0
    fp32_norm_fallback: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError("need 1 <= min_batch <= opt_batch <= max_batch")
        if not 1 <= self.min_tile <= self.opt_tile <= self.max_tile:
            raise ValueError("need 1 <= min_tile <= opt_tile <= max_tile")


@dataclass(frozen=True)
class ExportProfile:
    """One export profile: flavour, ONNX opset and exporter, Triton settings, parity, TensorRT.

    ``exporter``: ``torchscript`` (``torch.onnx.export(dynamo=False)``, fast and mature for
    these convolutional generators) or ``dynamo`` (``torch.export`` based; slower to export).
    """

    flavour: Flavour = "python"
    opset: int = 17
    exporter: Literal["torchscript", "dynamo"] = "torchscript"
    description: str = ""
    triton: TritonSettings = field(default_factory=TritonSettings)
    parity: ParitySettings = field(default_factory=ParitySettings)
    tensorrt: TensorRTSettings = field(default_factory=TensorRTSettings)

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise ValueError("opset must be >= 17")
        if self.flavour == "tensorrt" and self.tensorrt.max_batch < self.triton.max_batch_size:
            raise ValueError(
                "tensorrt.max_batch must be >= triton.max_batch_size (Triton refuses an engine "
                "whose profile is smaller than max_batch_size)"
            )


def load_profile(path: str | Path | None) -> ExportProfile:
    """Load ``path`` (YAML) into an :class:`ExportProfile`; ``None`` gives the CPU default."""
    if path is None:
        return ExportProfile()
    p = Path(path)
    try:
        return from_dict(ExportProfile, load_yaml(p))
    except ConfigError as exc:
        if str(exc).startswith(str(p)):
            raise
        raise ConfigError(f"{p}: {exc}") from exc
