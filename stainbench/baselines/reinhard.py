"""Reinhard colour transfer: match each tile's LAB mean and std to a target domain's.

Reinhard et al. (2001) transfer colour by shifting and scaling each channel of a perceptual
colour space. We use CIELAB (as most stain-normalization tools do): for every tile,

    lab_out = (lab - mean_tile) / std_tile * std_target + mean_target      (per channel)

then back to sRGB, rounded and clipped to uint8. ``mean_target``/``std_target`` are fitted
once on reference tiles of the target domain (:func:`fit_reinhard`, pooled over all pixels).

Two implementations of the same math: numpy (:func:`reinhard_transfer`, the reference) and
torch (:class:`ReinhardModule`, exported as an ONNX graph: per-tile means and stds are
reductions, everything else is element-wise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stainbench.baselines.lab import EPS, KAPPA, RGB_FROM_XYZ, WHITE, XYZ_FROM_RGB, lab_to_rgb
from stainbench.baselines.lab import rgb_to_lab as _rgb_to_lab
from stainbench.errors import DataError
from stainbench.export.onnx import TileModule

#: Smallest per-tile LAB std used as a divisor (a flat tile keeps its own value).
MIN_STD = 1e-3


@dataclass(frozen=True)
class ReinhardTarget:
    """Target LAB statistics: ``mean`` and ``std`` per channel (L, a, b)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "reinhard",
            "space": "CIELAB D65",
            "mean": list(self.mean),
            "std": list(self.std),
        }


def _check(tiles: np.ndarray, who: str) -> None:
    if not isinstance(tiles, np.ndarray) or tiles.dtype != np.uint8:
        raise DataError(f"{who}: tiles must be uint8 RGB, got {getattr(tiles, 'dtype', tiles)}")
    if tiles.ndim != 4 or tiles.shape[-1] != 3 or 0 in tiles.shape:
        raise DataError(f"{who}: tiles must be (N, H, W, 3), got {tiles.shape}")


def fit_reinhard(tiles: np.ndarray) -> ReinhardTarget:
    """LAB mean and std over every pixel of the reference ``tiles`` (uint8 ``(N, H, W, 3)``)."""
    _check(tiles, "reinhard reference")
    lab = _rgb_to_lab(tiles).reshape(-1, 3)
    mean, std = lab.mean(axis=0), lab.std(axis=0)
    return ReinhardTarget(tuple(map(float, mean)), tuple(map(float, np.maximum(std, MIN_STD))))


def reinhard_transfer(tiles: np.ndarray, target: ReinhardTarget) -> np.ndarray:
    """Numpy reference: uint8 ``(B, H, W, 3)`` -> uint8 ``(B, H, W, 3)``, each tile separately."""
    _check(tiles, "reinhard")
    lab = _rgb_to_lab(tiles)
    mean = lab.mean(axis=(1, 2), keepdims=True)
    std = np.maximum(lab.std(axis=(1, 2), keepdims=True), MIN_STD)
    out = (lab - mean) / std * np.asarray(target.std) + np.asarray(target.mean)
    return np.clip(np.round(lab_to_rgb(out) * 255.0), 0, 255).astype(np.uint8)


class ReinhardModule(TileModule):
    """Torch/ONNX Reinhard transfer: uint8 ``(B, H, W, 3)`` -> ``(uint8 BHW3, float B3HW)``.

    The float output is the transferred tile in pixel units (0..255) before rounding.
    Any tile size works (``size_multiple = 1``).
    """

    def __init__(self, target: ReinhardTarget) -> None:
        super().__init__(size_multiple=1)

        def t(a: Any) -> torch.Tensor:
            return torch.tensor(np.asarray(a, dtype=np.float32))

        self.register_buffer("xyz_from_rgb", t(XYZ_FROM_RGB / WHITE[:, None]))
        self.register_buffer("rgb_from_xyz", t(RGB_FROM_XYZ * WHITE[None, :]))
        self.register_buffer("t_mean", t(target.mean).reshape(1, 3, 1, 1))
        self.register_buffer("t_std", t(target.std).reshape(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.to(torch.float32) / 255.0  # (B, H, W, 3)
        lin = torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
        xyz = torch.matmul(lin, self.xyz_from_rgb.T).clamp_min(0.0)
        f = torch.where(xyz > EPS, xyz ** (1.0 / 3.0), KAPPA * xyz + 16.0 / 116.0)
        fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
        lab = torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)
        mean = lab.mean(dim=(2, 3), keepdim=True)
        std = ((lab - mean) ** 2).mean(dim=(2, 3), keepdim=True).sqrt().clamp_min(MIN_STD)
        out = (lab - mean) / std * self.t_std + self.t_mean  # (B, 3, H, W)
        fy = (out[:, 0] + 16.0) / 116.0
        fx = out[:, 1] / 500.0 + fy
        fz = (fy - out[:, 2] / 200.0).clamp_min(0.0)
        f = torch.stack([fx, fy, fz], dim=-1)  # (B, H, W, 3)
        f3 = f * f * f
        xyz = torch.where(f3 > EPS, f3, (f - 16.0 / 116.0) / KAPPA)
        lin = torch.matmul(xyz, self.rgb_from_xyz.T).clamp_min(0.0)
        srgb = torch.where(
            lin > 0.0031308, 1.055 * lin.clamp_min(1e-12) ** (1 / 2.4) - 0.055, 12.92 * lin
        )
        y_hwc = srgb.clamp(0.0, 1.0) * 255.0
        y8 = torch.clamp(torch.round(y_hwc), 0.0, 255.0).to(torch.uint8)  # Cast last
        y = y_hwc.permute(0, 3, 1, 2)
        return y8, y
