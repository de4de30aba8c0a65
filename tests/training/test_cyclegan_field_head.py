"""The ResNet generator's colour heads (``head: shift | affine | global``; the demo CycleGAN
uses ``global``): identity start, structure kept, batch independence, bad settings, a real
CycleGAN run on a tiny store, and an ONNX export that ONNX Runtime runs like torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from stainbench.errors import ModelError
from stainbench.models import create_model
from stainbench.training.checkpoint import load_checkpoint, load_generator
from stainbench.training.loop import fit
from stainbench.training.recipe import recipe_from_dict

HEADS = ["shift", "affine", "global"]


def _model(head: str, **kw: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet", n_blocks=1, base_width=4, residual=True, head=head, **kw).eval()


def _perturb(model: torch.nn.Module) -> None:
    """Random weights in the zero-initialized last layers, so the head is not the identity."""
    gen = torch.Generator().manual_seed(3)
    for last in (model.model[-1], getattr(model, "colour", None)):
        if last is None:
            continue
        with torch.no_grad():
            last.weight.copy_(torch.randn(last.weight.shape, generator=gen) * 0.5)
            last.bias.copy_(torch.randn(last.bias.shape, generator=gen) * 0.5)


@pytest.mark.parametrize("head", HEADS)
def test_field_head_starts_as_identity_and_has_no_full_resolution_decoder(head: str) -> None:
    model = _model(head)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), x)
    # one 7x7 stem at full resolution, no upsampling convolution, no 7x7 head
    convs = [
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    assert sum(c.kernel_size == (7, 7) for c in convs) == 1
    assert not any(isinstance(c, torch.nn.ConvTranspose2d) for c in convs)
    assert convs[-1].kernel_size == (1, 1)


@pytest.mark.parametrize("head", ["shift", "affine"])
def test_the_change_is_a_smooth_field_at_the_lowest_resolution(head: str) -> None:
    """``y - x`` (shift) or its gain/offset (affine) is a bilinear upsampling of a field
    with one value per 4x4 cell: the fine detail of the output is the input's."""
    model = _model(head)
    _perturb(model)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        y = model(x)
        low = model.model(x)
    assert low.shape[-2:] == (8, 8)
    field = F.interpolate(low, scale_factor=4, mode="bilinear", align_corners=False)
    if head == "shift":
        expected = x + torch.tanh(field)
    else:
        gain, offset = field.chunk(2, dim=1)
        expected = x + torch.tanh(gain * x + offset)
    torch.testing.assert_close(y, expected)
    assert not torch.allclose(y, x, atol=1e-3)
    if head == "shift":
        # the change has no detail finer than the 4-pixel grid: far smoother than the input
        def roughness(t: torch.Tensor) -> float:
            return float((t[..., 1:, :] - t[..., :-1, :]).abs().mean())

        assert roughness(y - x) < 0.5 * roughness(x)


def test_global_head_is_one_colour_curve_per_channel_and_image() -> None:
    """Equal input values give equal outputs anywhere in an image (a per-channel curve), the
    curve is monotone, and it depends on the image (its content and its mean colour)."""
    model = _model("global")
    _perturb(model)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    x[:, :, 5, 7] = x[:, :, 20, 30] = torch.tensor([-0.5, 0.1, 0.7])
    with torch.no_grad():
        y = model(x)
        # the gain and offset of the module docstring, rebuilt from the layers
        ab = model.model(x).mean(dim=(2, 3), keepdim=True) + model.colour(
            x.mean(dim=(2, 3), keepdim=True)
        )
    gain, offset = ab.chunk(2, dim=1)
    torch.testing.assert_close(y, x + torch.tanh(gain * x + offset))
    torch.testing.assert_close(y[:, :, 5, 7], y[:, :, 20, 30])
    assert not torch.allclose(y[0, :, 5, 7], y[1, :, 5, 7], atol=1e-3)  # image-dependent
    assert not torch.allclose(y, x, atol=1e-3)
    with torch.no_grad():  # the input's mean colour alone changes the curve
        shifted = model(x + 0.1) - 0.1
    assert not torch.allclose(shifted, y, atol=1e-4)


@pytest.mark.parametrize("head", HEADS)
def test_field_head_is_batch_independent(head: str) -> None:
    model = _model(head)
    _perturb(model)
    batch = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(batch)[2:3], model(batch[2:3]), rtol=1e-5, atol=1e-5)


def test_bad_head_settings_are_one_line_model_errors() -> None:
    with pytest.raises(ModelError, match="residual=True"):
        create_model("resnet", n_blocks=1, base_width=4, head="shift")
    with pytest.raises(ModelError, match="'full', 'shift', 'affine' or 'global'") as info:
        create_model("resnet", n_blocks=1, base_width=4, residual=True, head="colour")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("head", HEADS)
def test_cyclegan_with_a_field_head_trains_and_round_trips(
    head: str,
    demo_stores: Path,
    make_recipe: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    recipe = recipe_from_dict(
        make_recipe(
            "cyclegan",
            generator={"kwargs": {"n_blocks": 1, "base_width": 4, "residual": True, "head": head}},
            discriminator={"kwargs": {"base_width": 4, "n_layers": 2, "norm": "none"}},
        )
    )
    seen: list[dict[str, float]] = []
    run = tmp_path / "run"
    fit(
        recipe,
        run_dir=run,
        store=demo_stores / "paired.zarr",
        progress=False,
        on_step=lambda step, losses: seen.append(losses),
    )
    assert len(seen) == 4
    assert all(np.isfinite(v) for losses in seen for v in losses.values())
    payload = load_checkpoint(run / "last.pt")
    assert payload["networks"]["G_AB"]["kwargs"]["head"] == head
    assert payload["networks"]["G_BA"]["kwargs"]["head"] == head
    model, _ = load_generator(run / "last.pt")
    assert model.model[-1].weight.abs().sum() > 0  # trained away from the identity start


@pytest.mark.parametrize("head", HEADS)
def test_field_head_exports_to_onnx_and_runs_like_torch(head: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    from stainbench.export.onnx import export_float_graph

    model = _model(head)
    _perturb(model)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 64, 32)).astype(np.float32)
    path = export_float_graph(model, torch.from_numpy(x[:1]), tmp_path / "g.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
