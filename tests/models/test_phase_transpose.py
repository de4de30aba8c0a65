"""PhaseConvTranspose2d equals nn.ConvTranspose2d: outputs, gradients, state_dicts, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from stainbench.errors import ModelError
from stainbench.models import create_model
from stainbench.models.phase_transpose import PhaseConvTranspose2d, phase_decomposable

#: the generators' two upsampling layers, plus other decomposable strides/kernels
CONFIGS = [
    {"kernel_size": 4, "stride": 2, "padding": 1},  # UNet
    {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1},  # ResNet generator
    {"kernel_size": 2, "stride": 2, "padding": 0},
    {"kernel_size": 6, "stride": 2, "padding": 2},
    {"kernel_size": 3, "stride": 3, "padding": 1, "output_padding": 2},
    {"kernel_size": (4, 3), "stride": 2, "padding": 1, "output_padding": (0, 1)},
]
#: the UNet's input sides 1, 2, 4, ... and odd / non-square ones
SIZES = [(1, 1), (2, 2), (4, 4), (3, 5), (7, 6), (16, 16)]


def _pair(cfg: dict, dtype: torch.dtype, bias: bool = True) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ref = nn.ConvTranspose2d(5, 6, bias=bias, **cfg).to(dtype)
    phase = PhaseConvTranspose2d(5, 6, bias=bias, **cfg).to(dtype)
    phase.load_state_dict(ref.state_dict())
    return ref, phase


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: str(c["kernel_size"]) + str(c["stride"]))
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"]
)
def test_forward_and_gradients_equal_conv_transpose(
    cfg: dict, dtype: torch.dtype, tol: float
) -> None:
    ref, phase = _pair(cfg, dtype)
    gen = torch.Generator().manual_seed(1)
    for h, w in SIZES:
        x = torch.randn(2, 5, h, w, generator=gen, dtype=dtype, requires_grad=True)
        y_ref, y = ref(x), phase(x)
        assert y.shape == y_ref.shape
        torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
        g = torch.randn(y.shape, generator=gen, dtype=dtype)
        want = torch.autograd.grad(y_ref, (x, ref.weight, ref.bias), g)
        got = torch.autograd.grad(y, (x, phase.weight, phase.bias), g)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=10 * tol, rtol=10 * tol)


def test_without_bias_and_non_contiguous_input() -> None:
    ref, phase = _pair(CONFIGS[0], torch.float64, bias=False)
    x = torch.randn(2, 7, 6, 5, dtype=torch.float64).transpose(1, 3)[:, :5]  # strided view
    torch.testing.assert_close(phase(x), ref(x), atol=1e-12, rtol=1e-12)


def test_state_dict_and_initialization_match_the_native_layer() -> None:
    """Same parameter names, shapes and (seeded) initial values: checkpoints interchange."""
    torch.manual_seed(3)
    ref = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
    torch.manual_seed(3)
    phase = PhaseConvTranspose2d(8, 4, 4, stride=2, padding=1)
    a, b = ref.state_dict(), phase.state_dict()
    assert list(a) == list(b) == ["weight", "bias"]
    assert a["weight"].shape == (8, 4, 4, 4)
    for k in a:
        assert torch.equal(a[k], b[k])


def test_other_configurations_fall_back_to_the_transposed_convolution() -> None:
    assert not phase_decomposable((4, 4), (2, 2), (0, 0), (0, 0), (1, 1), 1)  # H -> 2H + 2
    assert not phase_decomposable((4, 4), (2, 2), (1, 1), (0, 0), (2, 2), 1)  # dilation
    assert not phase_decomposable((4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 2)  # groups
    assert not phase_decomposable((1, 1), (2, 2), (0, 0), (1, 1), (1, 1), 1)  # a phase without taps
    torch.manual_seed(0)
    ref = nn.ConvTranspose2d(4, 4, 4, stride=2, padding=0, groups=2)
    phase = PhaseConvTranspose2d(4, 4, 4, stride=2, padding=0, groups=2)
    phase.load_state_dict(ref.state_dict())
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(phase(x), ref(x))
    # an explicit output_size (here 2H + 1) also runs the transposed convolution
    ref, phase = _pair(CONFIGS[0], torch.float64)
    x = torch.randn(1, 5, 5, 5, dtype=torch.float64)
    out = ref(x, output_size=[11, 11])
    assert out.shape[-2:] == (11, 11)
    torch.testing.assert_close(phase(x, output_size=[11, 11]), out)


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("unet", {"depth": 4, "base_width": 4, "max_width_mult": 4}),
        ("resnet", {"n_blocks": 1, "base_width": 4}),
    ],
)
def test_generators_with_either_implementation_agree(arch: str, kwargs: dict) -> None:
    """Same seed -> same weights; outputs and a training step's gradients agree."""
    models = {}
    for impl in ("native", "phase"):
        torch.manual_seed(0)
        models[impl] = create_model(arch, transpose_impl=impl, **kwargs)
    native, phase = models["native"], models["phase"]
    assert any(isinstance(m, PhaseConvTranspose2d) for m in phase.modules())
    assert not any(isinstance(m, PhaseConvTranspose2d) for m in native.modules())
    for k, v in native.state_dict().items():
        assert torch.equal(v, phase.state_dict()[k]), k
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    y_native, y_phase = native(x), phase(x)
    torch.testing.assert_close(y_phase, y_native, atol=1e-5, rtol=1e-4)
    y_native.square().mean().backward()
    y_phase.square().mean().backward()
    for (name, p_native), p_phase in zip(
        native.named_parameters(), phase.parameters(), strict=True
    ):
        assert p_phase.grad is not None, name
        torch.testing.assert_close(p_phase.grad, p_native.grad, atol=1e-5, rtol=1e-3)
    # a checkpoint of one loads into the other
    phase.load_state_dict(native.state_dict())


def test_onnx_export_of_phase_unet_matches_native_torch(tmp_path: Path) -> None:
    """The exported graph (dynamic batch/height/width) equals the native eager model."""
    kwargs = {"depth": 3, "base_width": 4, "max_width_mult": 4}
    torch.manual_seed(0)
    native = create_model("unet", transpose_impl="native", **kwargs).eval()
    torch.manual_seed(0)
    phase = create_model("unet", transpose_impl="phase", **kwargs).eval()
    path = tmp_path / "g.onnx"
    with torch.no_grad():
        torch.onnx.export(
            phase,
            (torch.zeros(1, 3, 32, 32),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b", 2: "h", 3: "w"}},
        )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "ConvTranspose" not in ops and "Conv" in ops
    x = torch.rand(3, 3, 40, 24) * 2 - 1  # other batch and sizes than the trace
    (y,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = native(x).numpy()
    np.testing.assert_allclose(y, want, atol=1e-5)


def test_large_inputs_take_the_native_path_with_the_same_result() -> None:
    torch.manual_seed(0)
    ref = nn.ConvTranspose2d(6, 5, 4, stride=2, padding=1).double()
    phase = PhaseConvTranspose2d(6, 5, 4, stride=2, padding=1, max_pixels=16).double()
    phase.load_state_dict(ref.state_dict())
    assert "max_pixels=16" in repr(phase) and list(phase.state_dict()) == ["weight", "bias"]
    for side in (2, 3, 4, 5):  # 4, 9, 16 pixels: phase; 25: native
        x = torch.randn(1, 6, side, side, dtype=torch.float64)
        torch.testing.assert_close(phase(x), ref(x), atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="max_pixels"):
        PhaseConvTranspose2d(2, 2, 4, stride=2, padding=1, max_pixels=0)


def test_only_in_export_runs_native_in_eager_and_phase_in_the_onnx_graph(tmp_path: Path) -> None:
    torch.manual_seed(0)
    layer = PhaseConvTranspose2d(4, 3, 4, stride=2, padding=1, max_pixels=64, only_in_export=True)
    path = tmp_path / "layer.onnx"
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.onnx.export(layer, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
        want = nn.functional.conv_transpose2d(x, layer.weight, layer.bias, 2, 1)
        torch.testing.assert_close(layer(x), want, atol=0, rtol=0)  # eager: the native kernel
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "ConvTranspose" not in ops and "DepthToSpace" in ops
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()}
    )
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_default_auto_in_pytorch_is_native_above_8x8_and_matmul_col2im_below() -> None:
    """The default (``auto``): torch's own kernel on inputs > 64 pixels (bitwise), else GEMM."""
    kwargs = {"depth": 3, "base_width": 4, "max_width_mult": 4}
    torch.manual_seed(0)
    auto = create_model("unet", **kwargs)
    torch.manual_seed(0)
    native = create_model("unet", transpose_impl="native", **kwargs)
    layers = [m for m in auto.modules() if isinstance(m, PhaseConvTranspose2d)]
    assert len(layers) == 3
    assert all(m.only_in_export and m.max_pixels == 256 and m.gemm_max_pixels == 64 for m in layers)
    x = torch.rand(2, 3, 72, 72) * 2 - 1  # transposed-conv inputs 9x9, 18x18, 36x36: native
    assert torch.equal(auto(x), native(x))
    x = torch.rand(2, 3, 32, 48) * 2 - 1  # 4x6, 8x12, 16x24: the first one by matmul + col2im
    y_auto, y_native = auto(x), native(x)
    torch.testing.assert_close(y_auto, y_native, atol=1e-5, rtol=1e-4)
    y_auto.square().mean().backward()
    y_native.square().mean().backward()
    for p_auto, p_native in zip(auto.parameters(), native.parameters(), strict=True):
        torch.testing.assert_close(p_auto.grad, p_native.grad, atol=1e-6, rtol=1e-3)
    with pytest.raises(ModelError, match="transpose_impl"):
        create_model("unet", transpose_impl="fast", **kwargs)


@pytest.mark.parametrize("cfg", [*CONFIGS, {"kernel_size": 3, "stride": 2, "dilation": 2}])
def test_gemm_col2im_path_equals_conv_transpose(cfg: dict) -> None:
    torch.manual_seed(0)
    ref = nn.ConvTranspose2d(5, 6, **cfg).double()
    layer = PhaseConvTranspose2d(5, 6, gemm_max_pixels=10**6, **cfg).double()
    layer.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(1)
    for h, w in SIZES:
        x = torch.randn(2, 5, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
        y_ref, y = ref(x), layer(x)
        torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
        g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        want = torch.autograd.grad(y_ref, (x, ref.weight, ref.bias), g)
        got = torch.autograd.grad(y, (x, layer.weight, layer.bias), g)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)
    with pytest.raises(ValueError, match="gemm_max_pixels"):
        PhaseConvTranspose2d(2, 2, 4, stride=2, padding=1, gemm_max_pixels=-1)
