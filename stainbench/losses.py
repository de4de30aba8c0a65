r"""Training losses. Pure functions of tensors; the weights (lambdas) live in the recipes.

Shapes are ``(B, C, H, W)`` float32 unless stated; every loss returns a scalar tensor.

- :func:`gan_loss`: the adversarial loss of a discriminator's patch logits, either
  least-squares (``"lsgan"``, CycleGAN: ``mean((D - t)^2)`` with target ``t`` 1 for real and 0
  for fake) or the original cross-entropy (``"vanilla"``, pix2pix: binary cross-entropy of
  ``sigmoid(D)`` against ``t``; computed from logits for stability).
- :func:`l1_loss`: ``mean|a - b|``; the cycle-consistency and identity losses of CycleGAN
  and the L1 term of pix2pix.
- :func:`od_weight_map` and :func:`weighted_mse`: a per-pixel weight from the target's optical
  density, so that empty glass does not dominate the supervised loss.
- :func:`soft_histogram` and :func:`histogram_kld`: the KL divergence between the per-channel
  intensity distributions of target and prediction, differentiable through soft histograms.

Weighted MSE (why optical density). Slides are mostly tissue on white glass and the white
background is trivially easy; plain MSE lets those pixels dominate the average. By the
Beer-Lambert law the optical density ``OD = -log10(I / I_0)`` of a pixel is proportional to
the amount of stain on it, so it separates tissue from glass without any extra input and
grows with how much stain the model must reproduce. With ``I`` the target's intensity in
[0, 1] (``I_0 = 1``), per pixel ``od = mean_c -log10(max(I_c, 1/255))`` and::

    w = w_bg + (1 - w_bg) * clamp(od / od_ref, 0, 1)
    weighted_mse = sum_{b,c,h,w} w * (pred - target)^2 / (C * sum_{b,h,w} w)

so glass (od ~ 0) weighs ``w_bg`` (0.1 by default), tissue with ``od >= od_ref`` (0.3) weighs 1,
and the loss stays on the scale of a plain MSE (a weighted mean). The weight is computed from
the target only and carries no gradient. A binary tissue mask would be the special case
``od_ref -> 0``; the ramp avoids a hard threshold on faint stain.

KL divergence (formula). For image ``b``, channel ``c`` and ``K`` bin centres ``m_k`` evenly
spaced over ``[lo, hi]`` (bin width ``delta = (hi - lo) / (K - 1)``), every pixel value ``x``
(clamped to ``[lo, hi]``) votes for its two nearest bins with a triangular kernel::

    a_k(x) = max(0, 1 - |x - m_k| / delta)          (sum_k a_k(x) = 1)
    p_k = mean_{pixels} a_k(target),  q_k = mean_{pixels} a_k(pred)
    KLD = mean_{b,c} sum_k p_k * log((p_k + eps) / (q_k + eps))

i.e. ``KL(P_target || Q_pred)`` in nats. The votes are piecewise linear in ``x``, so the
histogram is differentiable almost everywhere, and cost O(pixels) rather than
O(pixels x K) as a Gaussian kernel would. It is zero when the prediction reproduces the
target's intensity distribution and penalises missing intensities (a prediction that is too
pale where the target has dark DAB) more than extra ones.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

GanMode = Literal["lsgan", "vanilla"]


def gan_loss(logits: torch.Tensor, real: bool, mode: GanMode = "lsgan") -> torch.Tensor:
    """Adversarial loss of patch logits ``(B, 1, h, w)`` against target 1 (real) or 0 (fake).

    ``"lsgan"``: ``mean((logits - t)^2)``; ``"vanilla"``: ``BCEWithLogits(logits, t)``.
    """
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, target)
    raise ValueError(f"gan mode must be 'lsgan' or 'vanilla', got {mode!r}")


def l1_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean|a - b|`` (cycle, identity and pix2pix L1 terms)."""
    return F.l1_loss(a, b)


def od_weight_map(
    intensity: torch.Tensor, od_ref: float = 0.3, background_weight: float = 0.1
) -> torch.Tensor:
    """Per-pixel weights ``(B, 1, H, W)`` in ``[background_weight, 1]`` from optical density.

    ``intensity``: the target in transmitted-light intensity, ``(B, C, H, W)`` in [0, 1]
    (1 = white glass). See the module docstring for the formula. No gradient flows through it.
    """
    if od_ref <= 0:
        raise ValueError(f"od_ref must be > 0, got {od_ref}")
    if not 0.0 <= background_weight <= 1.0:
        raise ValueError(f"background_weight must be in [0, 1], got {background_weight}")
    with torch.no_grad():
        od = -torch.log10(intensity.clamp(1.0 / 255.0, 1.0)).mean(dim=1, keepdim=True)
        ramp = (od / od_ref).clamp(0.0, 1.0)
        return background_weight + (1.0 - background_weight) * ramp


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean of ``(pred - target)^2``; ``weight`` broadcasts, e.g. ``(B, 1, H, W)``."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    w = weight.expand_as(pred)
    return (w * (pred - target) ** 2).sum() / w.sum().clamp_min(1e-12)


def soft_histogram(
    x: torch.Tensor, bins: int = 32, lo: float = -1.0, hi: float = 1.0
) -> torch.Tensor:
    """Differentiable per-image, per-channel histogram ``(B, C, bins)`` summing to 1.

    ``x``: ``(B, C, H, W)``; values are clamped to ``[lo, hi]``; triangular (linear
    interpolation) votes to the two nearest bin centres (formula in the module docstring).
    """
    if bins < 2 or hi <= lo:
        raise ValueError(f"need bins >= 2 and hi > lo, got bins={bins}, [{lo}, {hi}]")
    pos = (x.flatten(2).clamp(lo, hi) - lo) * ((bins - 1) / (hi - lo))  # (B, C, N) in [0, K-1]
    left = pos.detach().floor().clamp(max=bins - 2)
    frac = pos - left  # carries the gradient
    idx = left.long()
    hist = torch.zeros(*pos.shape[:2], bins, device=x.device, dtype=x.dtype)
    hist = hist.scatter_add(2, idx, 1.0 - frac).scatter_add(2, idx + 1, frac)
    return hist / pos.shape[-1]


def histogram_kld(
    pred: torch.Tensor,
    target: torch.Tensor,
    bins: int = 32,
    lo: float = -1.0,
    hi: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``KL(P_target || Q_pred)`` of per-channel soft histograms, mean over images and channels.

    Nats, >= 0, differentiable in ``pred``. Formula in the module docstring.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    q = soft_histogram(pred, bins, lo, hi)
    with torch.no_grad():
        p = soft_histogram(target, bins, lo, hi)
    return (p * torch.log((p + eps) / (q + eps))).sum(dim=-1).mean()
