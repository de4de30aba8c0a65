"""ThinConv2d (row convolutions + column sum) equals nn.Conv2d: outputs, gradients, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from stainbench.models import create_model
from stainbench.models.thin_conv import ThinConv2d, row_split_conv2d, row_sum_weight


@pytest.mark.parametrize(
    ("k", "padding", "bias"),
    [(7, 0, True), (7, 3, True), (3, 1, False), ((5, 3), (2, 1), True), ((2, 4), 0, True)],
)
def test_rows_equal_the_plain_convolution_forward_and_backward(
    k: int | tuple[int, int], padding: int | tuple[int, int], bias: bool
) -> None:
    torch.manual_seed(0)
    ref = nn.Conv2d(6, 3, k, padding=padding, bias=bias).double()
    thin = ThinConv2d(6, 3, k, padding=padding, bias=bias, impl="rows").double()
    thin.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(1)
    for h, w in [(9, 9), (11, 7), (8, 13)]:
        x = torch.randn(2, 6, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
        y_ref, y = ref(x), thin(x)
        assert y.shape == y_ref.shape
        torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
        g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        params = [p for p in (ref.weight, ref.bias) if p is not None]
        mine = [p for p in (thin.weight, thin.bias) if p is not None]
        want = torch.autograd.grad(y_ref, [x, *params], g)
        got = torch.autograd.grad(y, [x, *mine], g)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)


def test_state_dict_initialization_and_impls() -> None:
    torch.manual_seed(0)
    ref = nn.Conv2d(4, 3, 7)
    torch.manual_seed(0)
    thin = ThinConv2d(4, 3, 7, impl="native")
    # same parameters, same initialization (same RNG draws), no extra state: checkpoints of
    # either load into the other
    assert list(thin.state_dict()) == ["weight", "bias"]
    torch.testing.assert_close(thin.weight, ref.weight, atol=0, rtol=0)
    ref.load_state_dict(thin.state_dict())
    x = torch.randn(1, 4, 12, 12)
    # "native" runs the plain kernel: bitwise nn.Conv2d
    torch.testing.assert_close(thin(x), ref(x), atol=0, rtol=0)
    assert "impl=native" in repr(thin) and "impl=rows" in repr(ThinConv2d(4, 3, 7))
    with pytest.raises(ValueError, match="impl"):
        ThinConv2d(4, 3, 7, impl="fast")  # type: ignore[arg-type]


def test_configurations_outside_the_split_run_the_plain_convolution() -> None:
    torch.manual_seed(0)
    for kwargs in ({"stride": 2}, {"dilation": 2}, {"padding_mode": "reflect", "padding": 2}):
        ref = nn.Conv2d(4, 2, 5, **kwargs).double()
        thin = ThinConv2d(4, 2, 5, impl="rows", **kwargs).double()
        thin.load_state_dict(ref.state_dict())
        assert not thin._split_ok
        x = torch.randn(1, 4, 17, 17, dtype=torch.float64)
        torch.testing.assert_close(thin(x), ref(x), atol=0, rtol=0)


def test_row_sum_weight_is_one_hot_per_row() -> None:
    w = row_sum_weight(3, 4)
    assert w.shape == (3, 4, 4, 1)
    assert torch.equal(w.sum(dim=(1, 2, 3)), torch.full((3,), 4.0))
    assert torch.equal(w[1, :, :, 0], torch.eye(4))
    x = torch.randn(1, 2, 6, 6)
    weight = torch.randn(2, 2, 4, 3)
    got = row_split_conv2d(x, weight, None, (0, 0), row_sum_weight(2, 4))
    torch.testing.assert_close(got, nn.functional.conv2d(x, weight), atol=1e-5, rtol=1e-5)


def test_export_graph_uses_the_split_and_matches_eager(tmp_path: Path) -> None:
    torch.manual_seed(0)
    layer = ThinConv2d(8, 3, 7, padding=3)  # impl "rows", the default
    path = tmp_path / "thin.onnx"
    x = torch.randn(2, 8, 20, 16)
    with torch.no_grad():
        torch.onnx.export(
            layer,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}},
        )
        want = layer(x).numpy()
    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    assert len(convs) == 2  # row convolution + grouped column sum
    assert any(a.name == "group" and a.i == 3 for a in convs[1].attribute)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2 = torch.randn(3, 8, 24, 28)
    (got,) = sess.run(None, {"x": x2.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, layer(x2).numpy(), atol=1e-5)
    (got,) = sess.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_resnet_generator_head_is_thin_and_loads_plain_checkpoints() -> None:
    """The ResNet generator's 7x7 RGB head is a ThinConv2d; its state_dict keys are unchanged."""
    torch.manual_seed(0)
    gen = create_model("resnet", n_blocks=1, base_width=4).eval()
    heads = [m for m in gen.modules() if isinstance(m, ThinConv2d)]
    assert len(heads) == 1 and heads[0].out_channels == 3 and heads[0].kernel_size == (7, 7)
    plain = {k: v.clone() for k, v in gen.state_dict().items()}
    gen.load_state_dict(plain)  # strict: no extra keys
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        y = gen(x)
        # the head as a plain convolution gives the same output
        heads[0].impl = "native"
        torch.testing.assert_close(gen(x), y, atol=1e-5, rtol=1e-4)
