"""Losses: values on hand-made inputs, gradients, and the documented properties."""

from __future__ import annotations

import math

import pytest
import torch

from stainbench.losses import (
    gan_loss,
    histogram_kld,
    l1_loss,
    od_weight_map,
    soft_histogram,
    weighted_mse,
)


def test_gan_losses() -> None:
    logits = torch.tensor([[[[2.0, 0.0]]]])
    assert gan_loss(logits, True, "lsgan").item() == pytest.approx((1 + 1) / 2)
    assert gan_loss(logits, False, "lsgan").item() == pytest.approx((4 + 0) / 2)
    expected = (math.log1p(math.exp(-2.0)) + math.log(2.0)) / 2
    assert gan_loss(logits, True, "vanilla").item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="wgan"):
        gan_loss(logits, True, "wgan")  # type: ignore[arg-type]


def test_l1() -> None:
    assert l1_loss(torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), -0.5)).item() == 0.5


def test_od_weights_glass_low_tissue_high() -> None:
    intensity = torch.ones(1, 3, 2, 2)
    intensity[..., 0, 0] = 0.2  # dark stain: od = 0.70 > od_ref
    intensity[..., 0, 1] = 10**-0.15  # od = 0.15, half of od_ref
    w = od_weight_map(intensity, od_ref=0.3, background_weight=0.1)
    assert w.shape == (1, 1, 2, 2)
    assert w[0, 0, 0, 0].item() == pytest.approx(1.0)
    assert w[0, 0, 0, 1].item() == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)
    assert w[0, 0, 1, 1].item() == pytest.approx(0.1)


def test_weighted_mse_is_a_weighted_mean() -> None:
    pred = torch.zeros(1, 1, 1, 2)
    target = torch.tensor([[[[1.0, 3.0]]]])
    w = torch.tensor([[[[3.0, 1.0]]]])
    assert weighted_mse(pred, target, w).item() == pytest.approx((3 * 1 + 1 * 9) / 4)
    assert weighted_mse(pred, target, torch.ones_like(w)).item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match=r"\(1, 1, 1, 3\)"):
        weighted_mse(torch.zeros(1, 1, 1, 3), target, w)


def test_soft_histogram_sums_to_one_and_locates_values() -> None:
    x = torch.full((2, 3, 4, 4), 0.5)
    h = soft_histogram(x, bins=5, lo=-1, hi=1)
    assert h.shape == (2, 3, 5)
    torch.testing.assert_close(h.sum(-1), torch.ones(2, 3))
    assert int(h[0, 0].argmax()) == 3  # centres -1, -.5, 0, .5, 1


def test_kld_zero_for_equal_positive_and_differentiable() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
    assert histogram_kld(target.clone(), target).item() == pytest.approx(0.0, abs=1e-6)
    pred = (target * 0.3).requires_grad_(True)  # compressed intensities: different histogram
    kld = histogram_kld(pred, target)
    assert kld.item() > 0.05
    kld.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0
    # a step against the gradient lowers the divergence
    with torch.no_grad():
        better = pred - 0.5 * pred.grad / pred.grad.abs().max()
    assert histogram_kld(better, target).item() < kld.item()
