"""Every registered model: forward shapes, batch independence, registry errors."""

from __future__ import annotations

import pytest
import torch

from stainbench.errors import ModelError
from stainbench.models import create_model, get_entry, list_models
from stainbench.models.discriminators import patchgan_receptive_field

MODELS = list_models()


def test_registry_lists_the_three_architectures() -> None:
    assert set(MODELS) >= {"unet", "resnet", "patchgan"}
    assert list_models("generator") == sorted(n for n in MODELS if n != "patchgan")


def test_unknown_name_lists_valid_models() -> None:
    with pytest.raises(ModelError) as info:
        create_model("unet_9000")
    msg = str(info.value)
    assert "unet_9000" in msg and "\n" not in msg
    for name in MODELS:
        assert name in msg


def test_bad_kwargs_are_model_errors() -> None:
    with pytest.raises(ModelError, match="widht"):
        create_model("unet", widht=3)
    with pytest.raises(ModelError, match="depth"):
        create_model("unet", depth=0)


def _small(name: str, **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, **{**get_entry(name).small_kwargs, **extra})


@pytest.mark.parametrize("name", MODELS)
def test_forward_shape(name: str) -> None:
    model = _small(name).eval()
    entry = get_entry(name)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        y = model(x)
    assert y.dtype == torch.float32
    if entry.role == "generator":
        assert y.shape == x.shape
        assert isinstance(model.size_multiple, int) and 32 % model.size_multiple == 0
        assert torch.all(y.abs() <= 1.0)  # tanh head by default
    else:
        assert y.shape[:2] == (2, 1) and y.ndim == 4


@pytest.mark.parametrize("name", MODELS)
def test_batch_independence(name: str) -> None:
    """One tile's eval output alone equals its output inside a batch of different tiles."""
    model = _small(name, norm="instance").eval()
    gen = torch.Generator().manual_seed(1)
    batch = torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1
    with torch.no_grad():
        together = model(batch)
        alone = model(batch[2:3])
    torch.testing.assert_close(together[2:3], alone, rtol=1e-5, atol=1e-5)


def test_size_multiples() -> None:
    assert create_model("unet", depth=8, base_width=2).size_multiple == 256
    assert create_model("unet", depth=7, base_width=2).size_multiple == 128
    assert create_model("resnet", n_blocks=6, base_width=2).size_multiple == 4


def test_classic_parameter_counts() -> None:
    """unet_256 / resnet_9blocks / conditional PatchGAN have the published sizes."""

    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert abs(count(create_model("unet", depth=8, base_width=64)) / 1e6 - 54.41) < 0.02
    assert abs(count(create_model("resnet", n_blocks=9, base_width=64)) / 1e6 - 11.378) < 0.01
    assert abs(count(create_model("patchgan", in_channels=6)) / 1e6 - 2.769) < 0.01


@pytest.mark.parametrize(("n_layers", "expected"), [(3, 70), (1, 16)])
def test_patchgan_receptive_field_measured(n_layers: int, expected: int) -> None:
    """The formula agrees with the gradient footprint of one output logit."""
    assert patchgan_receptive_field(n_layers) == expected
    model = create_model("patchgan", base_width=2, n_layers=n_layers, norm="none")
    x = torch.randn(1, 3, 160, 160, requires_grad=True)
    y = model(x)
    cy, cx = y.shape[-2] // 2, y.shape[-1] // 2
    y[0, 0, cy, cx].backward()
    touched = (x.grad.abs().sum(dim=(0, 1)) > 0).nonzero()
    extent = (touched.max(0).values - touched.min(0).values + 1).tolist()
    assert extent == [expected, expected]


def test_resize_upsampling_variant() -> None:
    model = create_model("unet", depth=3, base_width=4, upsample="resize").eval()
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("name", list_models("generator"))
def test_residual_generators_start_as_identity(name: str) -> None:
    model = _small(name, residual=True).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), x)
    with pytest.raises(ModelError, match="residual"):
        create_model(name, **get_entry(name).small_kwargs, residual=True, out_channels=1)
