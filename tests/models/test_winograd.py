"""Winograd convolutions: exact math, gradients, the module's routing, export and models."""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stainbench.errors import ModelError
from stainbench.models.registry import create_model
from stainbench.models.winograd import (
    WinogradConv2d,
    WinogradConvFunction,
    winograd_conv2d,
    winograd_matrices,
)

TILES = [(2, 3), (4, 3), (3, 2), (2, 4), (3, 4)]
WINOGRAD_BACKWARD = "WinogradConvFunctionBackward"


def _path(y: torch.Tensor) -> str:
    """Which kernel produced ``y``: the Winograd function, or torch's convolution."""
    node = y.grad_fn
    while node is not None and type(node).__name__ not in (
        WINOGRAD_BACKWARD,
        "ConvolutionBackward0",
    ):
        node = node.next_functions[0][0] if node.next_functions else None
    return type(node).__name__


@pytest.mark.parametrize(("m", "r"), TILES)
def test_matrices_compute_the_correlation_exactly(m: int, r: int) -> None:
    at, g, bt = winograd_matrices(m, r)
    assert at.shape == (m, m + r - 1) and g.shape == (m + r - 1, r) and bt.shape == (m + r - 1,) * 2
    gen = torch.Generator().manual_seed(m * 10 + r)
    d = torch.randn(m + r - 1, dtype=torch.float64, generator=gen)
    w = torch.randn(r, dtype=torch.float64, generator=gen)
    expected = torch.stack([(d[i : i + r] * w).sum() for i in range(m)])
    torch.testing.assert_close(at @ ((g @ w) * (bt @ d)), expected, rtol=0, atol=1e-12)


def test_matrices_reject_impossible_tiles() -> None:
    with pytest.raises(ValueError, match="interpolation points"):
        winograd_matrices(8, 3)
    with pytest.raises(ValueError, match="m, r >= 1"):
        winograd_matrices(0, 3)


def _grads(fn, x, w, b, seed: int = 0):
    y = fn(x, w, b)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.dtype)
    inputs = [t for t in (x, w, b) if t is not None]
    return (y, *torch.autograd.grad(y, inputs, g))


@pytest.mark.parametrize(("m", "r"), TILES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_equals_direct_convolution_with_gradients_float64(m: int, r: int, bias: bool) -> None:
    # output sizes 11 x 8: not multiples of m for most tiles (padded and cropped inside)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 10 + r, 7 + r, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(6, 5, r, r, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, generator=gen, requires_grad=True) if bias else None
    got = _grads(lambda x, w, b: winograd_conv2d(x, w, b, m), x, w, b)
    want = _grads(lambda x, w, b: F.conv2d(x, w, b), x, w, b)
    assert got[0].shape == want[0].shape == (2, 6, 11, 8)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_autograd_function_passes_gradcheck() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: WinogradConvFunction.apply(x, w, b, 2), (x, w, b)
    )


@pytest.mark.parametrize(("m", "r"), [(4, 3), (3, 4)])
def test_float32_error_is_close_to_the_direct_convolution(m: int, r: int) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 64, 20 + r - 1, 20 + r - 1, generator=gen, requires_grad=True)
    w = (torch.randn(32, 64, r, r, generator=gen) * 0.05).requires_grad_()
    got = _grads(lambda x, w, b: winograd_conv2d(x, w, b, m), x, w, None)
    exact = _grads(lambda x, w, b: F.conv2d(x, w, b), x.double(), w.double(), None)
    for a, e in zip(got, exact, strict=True):
        rel = ((a.double() - e).abs().max() / e.abs().max()).item()
        assert rel < 2e-5, rel


def _conv_pair(c_in: int, c_out: int, k: int, padding: int) -> tuple[nn.Conv2d, WinogradConv2d]:
    torch.manual_seed(4)
    native = nn.Conv2d(c_in, c_out, k, padding=padding)
    wino = WinogradConv2d(c_in, c_out, k, padding=padding)
    wino.load_state_dict(native.state_dict())  # same keys, same shapes
    return native, wino


@pytest.mark.parametrize(("k", "padding"), [(3, 0), (3, 1), (4, 1)])
def test_module_matches_conv2d_and_takes_the_winograd_path(k: int, padding: int) -> None:
    native, wino = _conv_pair(128, 128, k, padding)
    assert list(wino.state_dict()) == list(native.state_dict())
    x = torch.randn(2, 128, 18, 18, requires_grad=True)
    y = wino(x)
    assert _path(y) == WINOGRAD_BACKWARD
    torch.testing.assert_close(y, native(x), rtol=1e-4, atol=1e-4)
    y.sum().backward()
    gw = wino.weight.grad
    native(x).sum().backward()
    torch.testing.assert_close(gw, native.weight.grad, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    ("c_in", "c_out", "size", "kwargs"),
    [
        (64, 128, 18, {}),  # too few input channels
        (128, 128, 8, {}),  # too few output pixels (8 x 8 < 16 x 16)
        (128, 128, 18, {"stride": 2}),  # not stride 1
        (128, 128, 18, {"groups": 2}),
        (128, 128, 18, {"padding_mode": "reflect", "padding": 1}),
        (128, 128, 18, {"padding": "same"}),
        (128, 128, 18, {"dilation": 2}),
    ],
)
def test_module_runs_torch_where_winograd_does_not_apply(
    c_in: int, c_out: int, size: int, kwargs: dict
) -> None:
    conv = WinogradConv2d(c_in, c_out, 3, **kwargs)
    y = conv(torch.randn(1, c_in, size, size, requires_grad=True))
    assert _path(y) == "ConvolutionBackward0"


def test_module_runs_torch_under_autocast_and_in_half_precision() -> None:
    conv = WinogradConv2d(128, 128, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(torch.randn(1, 128, 18, 18, requires_grad=True))
    assert _path(y) == "ConvolutionBackward0"
    x = torch.randn(1, 128, 18, 18, dtype=torch.bfloat16, requires_grad=True)
    y = conv.to(torch.bfloat16)(x)
    assert y.dtype == torch.bfloat16 and _path(y) == "ConvolutionBackward0"


def test_module_handles_unbatched_input_and_explains_a_wrong_channel_count() -> None:
    native, wino = _conv_pair(128, 128, 3, 1)
    x = torch.randn(128, 18, 18)  # unbatched, as nn.Conv2d accepts
    torch.testing.assert_close(wino(x), native(x))
    with pytest.raises(RuntimeError, match=r"expected input.*to have 128 channels"):
        wino(torch.randn(1, 64, 18, 18))


def test_module_keeps_a_channels_last_input_channels_last() -> None:
    native, wino = _conv_pair(128, 128, 3, 1)
    x = torch.randn(2, 128, 18, 18).contiguous(memory_format=torch.channels_last)
    y = wino(x.requires_grad_())
    assert _path(y) == WINOGRAD_BACKWARD
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, native(x), rtol=1e-4, atol=1e-4)


def test_module_rejects_an_impossible_tile_when_built() -> None:
    with pytest.raises(ValueError, match="interpolation points"):
        WinogradConv2d(128, 128, 3, tile=7)
    with pytest.raises(ValueError, match="m, r >= 1"):
        WinogradConv2d(128, 128, 3, tile=0)


@pytest.mark.parametrize("needs", ["x", "weight"])
def test_backward_for_one_input_only(needs: str) -> None:
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 10, 10, dtype=torch.float64, generator=gen)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64, generator=gen)
    (x if needs == "x" else w).requires_grad_()
    leaf = x if needs == "x" else w
    (got,) = torch.autograd.grad(winograd_conv2d(x, w, None, 4).sum(), leaf)
    (want,) = torch.autograd.grad(F.conv2d(x, w).sum(), leaf)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_double_backward_is_refused_clearly() -> None:
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    y = winograd_conv2d(x, w, None, 2).sum()
    with pytest.raises(RuntimeError, match=r"differentiable once only.*conv_impl='native'"):
        torch.autograd.grad(y, x, create_graph=True)


def test_matrices_are_fresh_tensors() -> None:
    at, _, _ = winograd_matrices(4, 3)
    at.zero_()
    assert winograd_matrices(4, 3)[0].abs().sum() > 0


def test_onnx_export_holds_a_plain_conv(tmp_path) -> None:
    native, wino = _conv_pair(128, 128, 3, 1)
    x = torch.randn(1, 128, 20, 20)
    path = tmp_path / "conv.onnx"
    torch.onnx.export(wino.eval(), (x,), str(path), input_names=["x"], dynamo=False)
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops == ["Conv"]
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, native(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_models_have_the_option_and_keep_their_math() -> None:
    # resnet blocks at 128 channels, 16 x 16: eligible; the same weights in both variants
    kw = {"n_blocks": 1, "base_width": 32}
    torch.manual_seed(5)
    auto = create_model("resnet", conv_impl="auto", **kw)
    torch.manual_seed(5)
    native = create_model("resnet", conv_impl="native", **kw)
    assert sum(isinstance(m, WinogradConv2d) for m in auto.modules()) == 2
    assert not any(isinstance(m, WinogradConv2d) for m in native.modules())
    block_conv = next(m for m in auto.modules() if isinstance(m, WinogradConv2d))
    assert _path(block_conv(torch.randn(1, 128, 18, 18))) == WINOGRAD_BACKWARD
    for a, b in itertools.zip_longest(auto.state_dict().items(), native.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])  # same init draws, same keys
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(auto(x), native(x), rtol=1e-4, atol=1e-4)
    d = create_model("patchgan", conv_impl="auto", base_width=32, n_layers=3)
    assert [m.out_channels for m in d.modules() if isinstance(m, WinogradConv2d)] == [256]
    with pytest.raises(ModelError, match="conv_impl must be 'native' or 'auto'"):
        create_model("resnet", conv_impl="fast")
