"""ONNX export of a generator as a uint8-in / uint8-out tile model.

:class:`TileTranslator` wraps a generator with everything a client would otherwise have to get
right: uint8 ``(B, H, W, 3)`` RGB in, normalization with domain A's statistics, the generator,
de-normalization with domain B's statistics, rounding and clamping, uint8 ``(B, H, W, 3)`` out.
All of it is in the graph and costs a few element-wise ops per pixel.

:func:`export_onnx` writes two files: the served ``model.onnx`` (one output, ``OUTPUT``) and a
parity model with a second output ``OUTPUT_FLOAT`` (the de-normalized float tile before
rounding, ``(B, 3, H, W)`` float32 in pixel units) that the parity gate compares with PyTorch.
Both are the same graph; the served one only drops the extra output. Weights are inside the
file (no ``model.onnx.data``), batch/height/width are dynamic, and the model's size multiple is
recorded in the ONNX metadata, where :class:`OnnxTileModel` enforces it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from stainbench.errors import DataError, ExportError, StainbenchError

INPUT_NAME = "INPUT"
OUTPUT_NAME = "OUTPUT"
FLOAT_OUTPUT_NAME = "OUTPUT_FLOAT"
META_PREFIX = "stainbench."

Exporter = Literal["torchscript", "dynamo"]


def affine_from_normalization(norm: Any, where: str = "normalization") -> tuple[np.ndarray, ...]:
    """``(offset, scale)`` float32 arrays of shape ``(3,)`` from a Normalization or its dict.

    The map is ``x_norm = (x - offset) / scale`` with ``x`` in raw pixel units (0..255), as
    :class:`stainbench.data.transforms.Normalization` defines it; ``norm`` is one of those or
    its ``to_dict()`` form (as stored in checkpoints).
    """
    from stainbench.data.transforms import Normalization

    if isinstance(norm, Mapping):
        try:
            norm = Normalization.from_dict(norm)
        except StainbenchError as exc:
            raise ExportError(f"{where}: cannot read normalization statistics ({exc})") from exc
    if not isinstance(norm, Normalization):
        raise ExportError(f"{where}: expected normalization statistics, got {type(norm).__name__}")
    if norm.channels != 3:
        raise ExportError(f"{where}: served models take RGB tiles, got {norm.channels} channels")
    return np.asarray(norm.offset, np.float32), np.asarray(norm.scale, np.float32)


class TileModule(nn.Module):
    """Base of every exportable tile model: uint8 ``(B, H, W, 3)`` in, two outputs.

    ``forward(x)`` returns ``(y_uint8, y_float)``: uint8 ``(B, H, W, 3)`` and the float32
    ``(B, 3, H, W)`` tile in pixel units before rounding (what the parity gate compares).
    ``size_multiple``: H and W must be multiples of it.
    """

    def __init__(self, size_multiple: int = 1) -> None:
        super().__init__()
        self.size_multiple = int(size_multiple)

    @torch.no_grad()
    def translate(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run on a numpy uint8 ``(B, H, W, 3)`` batch: ``(uint8 BHW3, float32 B3HW)``."""
        check_tiles(tiles, self.size_multiple, "PyTorch model")
        y8, y = self(torch.from_numpy(np.ascontiguousarray(tiles)))
        return y8.numpy(), y.numpy()


class TileTranslator(TileModule):
    """uint8 RGB tiles in, uint8 RGB tiles out, around a generator.

    ``forward(x)``: ``x`` uint8 ``(B, H, W, 3)``; returns ``(y_uint8, y_float)`` with
    ``y_uint8`` uint8 ``(B, H, W, 3)`` = clamp(round(y_float), 0, 255) and ``y_float`` float32
    ``(B, 3, H, W)`` = generator output de-normalized with B's statistics (pixel units).
    H and W must be multiples of ``size_multiple``.
    """

    def __init__(
        self,
        generator: nn.Module,
        in_offset: np.ndarray,
        in_scale: np.ndarray,
        out_offset: np.ndarray,
        out_scale: np.ndarray,
        size_multiple: int = 1,
    ) -> None:
        super().__init__(size_multiple)
        self.generator = generator

        def affine(scale: np.ndarray, shift: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            # per-channel y = x * scale + shift as a depthwise 1x1 convolution (weight, bias)
            w = torch.as_tensor(np.asarray(scale, dtype=np.float64)).reshape(3, 1, 1, 1)
            b = torch.as_tensor(np.asarray(shift, dtype=np.float64)).reshape(3)
            return w.to(torch.float32), b.to(torch.float32)

        in_off = np.asarray(in_offset, np.float64)
        in_sc = np.asarray(in_scale, np.float64)
        w_in, b_in = affine(1.0 / in_sc, -in_off / in_sc)
        w_out, b_out = affine(np.asarray(out_scale, np.float64), np.asarray(out_offset, np.float64))
        self.register_buffer("in_weight", w_in)
        self.register_buffer("in_bias", b_in)
        self.register_buffer("out_weight", w_out)
        self.register_buffer("out_bias", b_out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The affine maps are depthwise 1x1 convolutions rather than broadcast Sub/Div/Mul/Add:
        # ONNX Runtime's transpose optimizer moves the NHWC->NCHW Transpose past element-wise
        # ops, whose per-channel broadcast over a last axis of 3 then runs ~20x slower
        # (measured: 120 vs 2 ms for a batch of 8 256x256 tiles; docs/benchmarks/export.md).
        z = F.conv2d(
            x.to(torch.float32).permute(0, 3, 1, 2), self.in_weight, self.in_bias, groups=3
        )
        y = F.conv2d(self.generator(z), self.out_weight, self.out_bias, groups=3)
        # uint8 only at the graph's edges (Cast first / last): TensorRT takes uint8 network
        # inputs and outputs next to Cast layers, not inside other layers
        y8 = torch.clamp(torch.round(y), 0.0, 255.0).permute(0, 2, 3, 1).to(torch.uint8)
        return y8, y


def make_translator(
    generator: nn.Module,
    normalization: Mapping[str, Any],
    size_multiple: int,
    where: str = "checkpoint",
) -> TileTranslator:
    """:class:`TileTranslator` for ``generator`` (put in eval mode) with ``{"A", "B"}`` stats."""
    if "A" not in normalization or "B" not in normalization:
        raise ExportError(f"{where}: normalization statistics for domains A and B are missing")
    a_off, a_sc = affine_from_normalization(normalization["A"], f"{where}: normalization.A")
    b_off, b_sc = affine_from_normalization(normalization["B"], f"{where}: normalization.B")
    return TileTranslator(generator.eval(), a_off, a_sc, b_off, b_sc, size_multiple).eval()


def check_tiles(tiles: np.ndarray, size_multiple: int, who: str) -> None:
    """One-line :class:`DataError` unless ``tiles`` is uint8 ``(B, H, W, 3)`` of valid size."""
    if not isinstance(tiles, np.ndarray) or tiles.dtype != np.uint8:
        dtype = getattr(tiles, "dtype", type(tiles).__name__)
        raise DataError(f"{who}: tiles must be a uint8 numpy array, got {dtype}")
    if tiles.ndim != 4 or tiles.shape[3] != 3 or tiles.shape[0] < 1:
        raise DataError(f"{who}: tiles must be (batch, height, width, 3) RGB, got {tiles.shape}")
    h, w = tiles.shape[1:3]
    m = max(1, int(size_multiple))
    if h < 1 or w < 1 or h % m or w % m:
        raise DataError(
            f"{who}: tile height and width must be positive multiples of {m}, got {h}x{w} "
            f"(crop or pad tiles to a multiple of {m})"
        )


@dataclass(frozen=True)
class OnnxFiles:
    """The files :func:`export_onnx` wrote."""

    model: Path  #: served graph: INPUT -> OUTPUT
    parity: Path  #: same graph with the extra OUTPUT_FLOAT output


def export_onnx(
    translator: TileModule,
    out_dir: str | Path,
    *,
    opset: int = 17,
    exporter: Exporter = "torchscript",
    metadata: Mapping[str, str] | None = None,
    sample_tile: int | None = None,
) -> OnnxFiles:
    """Export ``translator`` (eval mode) to ``out_dir/model.onnx`` and ``out_dir/parity.onnx``.

    ``metadata`` is stored as ONNX ``metadata_props`` (keys prefixed ``stainbench.``; the size
    multiple is always recorded). ``sample_tile``: side of the example tile used for tracing
    (default: the smallest multiple of the size multiple >= 64). Both files pass
    ``onnx.checker.check_model(full_check=True)``; failures are :class:`ExportError`.
    """
    import onnx

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    translator = translator.eval()
    m = translator.size_multiple
    side = sample_tile or max(m, -(-64 // m) * m)
    example = torch.zeros((2, side, side, 3), dtype=torch.uint8)
    full_path = out / "parity.onnx"
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME, FLOAT_OUTPUT_NAME]}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                dim = torch.export.Dim.DYNAMIC
                torch.onnx.export(
                    translator,
                    (example,),
                    str(full_path),
                    dynamo=True,
                    opset_version=opset,
                    external_data=False,
                    dynamic_shapes={"x": {0: dim, 1: dim, 2: dim}},
                    verbose=False,
                    **names,
                )
            else:
                torch.onnx.export(
                    translator,
                    (example,),
                    str(full_path),
                    dynamo=False,
                    opset_version=opset,
                    dynamic_axes={
                        INPUT_NAME: {0: "batch", 1: "height", 2: "width"},
                        OUTPUT_NAME: {0: "batch", 1: "height", 2: "width"},
                        FLOAT_OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                    },
                    **names,
                )
    except Exception as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export ({exporter}) failed: {line[:200]}") from exc
    stray = full_path.with_name(full_path.name + ".data")
    full = onnx.load(str(full_path), load_external_data=True)
    stray.unlink(missing_ok=True)
    meta = {"size_multiple": str(m), "input": "uint8 (B,H,W,3) RGB", "output": "uint8 (B,H,W,3)"}
    meta.update(dict(metadata or {}))
    del full.metadata_props[:]
    for key, value in sorted(meta.items()):
        full.metadata_props.add(key=META_PREFIX + key, value=str(value))
    full.producer_name = "stainbench"
    drop_trailing_empty_inputs(full)
    drop_bias_before_instance_norm(full)
    served = onnx.ModelProto()
    served.CopyFrom(full)
    keep = [o for o in served.graph.output if o.name == OUTPUT_NAME]
    del served.graph.output[:]
    served.graph.output.extend(keep)
    model_path = out / "model.onnx"
    for proto, path in ((full, full_path), (served, model_path)):
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as exc:
            line = str(exc).strip().splitlines()[0]
            raise ExportError(f"exported ONNX graph fails onnx.checker: {line[:200]}") from exc
        onnx.save_model(proto, str(path), save_as_external_data=False)
    return OnnxFiles(model=model_path, parity=full_path)


def drop_trailing_empty_inputs(model: Any) -> int:
    """Remove omitted optional inputs (empty names) from the end of every node's input list.

    The same graph in ONNX's semantics, but ONNX Runtime's Pad-into-Conv fusion refuses a
    ``Pad`` whose optional ``constant_value`` input is present as an empty name, which is how
    the torchscript exporter writes ``F.pad``. The phase-decomposed transposed convolutions
    have one such ``Pad`` per phase; once fused, unet_256 at batch 8 ran 5% faster (fewer NCHWc
    reorders too). Returns the number of inputs removed; ``model`` is changed in place.
    """
    removed = 0
    for node in model.graph.node:
        while len(node.input) and node.input[-1] == "":
            node.input.pop()
            removed += 1
    return removed


def drop_bias_before_instance_norm(model: Any) -> int:
    """Remove the bias of every (transposed) convolution whose only consumer is an instance norm.

    Instance normalization subtracts each channel's mean over the image, so a per-channel
    bias added right before it cancels exactly (the variance does not change either): the
    same function up to float rounding. The classic generators keep these biases (their
    ``use_bias`` follows the norm type), and ONNX Runtime adds a ``ConvTranspose`` bias in a
    separate single-threaded pass over each image's output (unet_256's 64x64 and 128x128
    levels: ~1% of the graph at batch 8). Returns the number of biases removed; ``model`` is
    changed in place.
    """
    graph = model.graph
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    removed = 0
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) != 3:
            continue
        out = node.output[0]
        users = consumers.get(out, [])
        if (
            out not in outputs
            and len(users) == 1
            and users[0].op_type == "InstanceNormalization"
            and list(users[0].input).count(out) == 1
            and users[0].input[0] == out
        ):
            node.input.pop()
            removed += 1
    if removed:
        drop_unused_initializers(model)
    return removed


def drop_unused_initializers(model: Any) -> int:
    """Remove initializers that no node reads (ONNX Runtime would warn about each one).

    Returns the number removed; ``model`` is changed in place.
    """
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    removed = len(graph.initializer) - len(keep)
    if removed:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return removed


def export_float_graph(
    module: nn.Module, example: torch.Tensor, path: str | Path, *, drop_empty_inputs: bool = True
) -> Path:
    """A bare float module as ONNX: input ``x``, output ``y``, batch dimension dynamic.

    For benchmarks and tests that time a generator without the served model's uint8 wrapper:
    the torchscript exporter at opset 17, ``module`` in eval mode, traced on ``example``
    (e.g. ``(1, 3, 256, 256)`` float32), exporter warnings silenced. ``drop_empty_inputs``:
    apply :func:`drop_trailing_empty_inputs` and :func:`drop_bias_before_instance_norm` as
    :func:`export_onnx` does. Returns ``path``.
    """
    import onnx

    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
        )
    if drop_empty_inputs:
        proto = onnx.load(str(path))
        drop_trailing_empty_inputs(proto)
        drop_bias_before_instance_norm(proto)
        onnx.save_model(proto, str(path))
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``stainbench.*`` metadata of an ONNX file (prefix removed)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    n = len(META_PREFIX)
    return {p.key[n:]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}


class OnnxTileModel:
    """An exported tile model run in-process with ONNX Runtime (CPU).

    ``run(tiles)``: uint8 ``(B, H, W, 3)`` -> uint8 ``(B, H, W, 3)`` (first output). Tile sizes
    are checked against the ``size_multiple`` in the file's metadata before running.
    ``threads``: intra-op threads (0: ONNX Runtime's default); idle threads do not spin.
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"{self.path}: no such ONNX file")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            line = str(exc).strip().splitlines()[0]
            raise ExportError(f"{self.path}: ONNX Runtime cannot load it: {line[:200]}") from exc
        self.metadata = {
            k[len(META_PREFIX) :]: v
            for k, v in self.session.get_modelmeta().custom_metadata_map.items()
            if k.startswith(META_PREFIX)
        }
        self.size_multiple = int(self.metadata.get("size_multiple", "1") or 1)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run_all(self, tiles: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph for ``tiles`` (uint8 ``(B, H, W, 3)``)."""
        check_tiles(tiles, self.size_multiple, str(self.path))
        return self.session.run(None, {self.input_name: np.ascontiguousarray(tiles)})

    def run(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 ``(B, H, W, 3)`` output tiles for uint8 ``(B, H, W, 3)`` input tiles."""
        return self.run_all(tiles)[0]


def metadata_json(value: Any) -> str:
    """Compact JSON for a metadata value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
