"""sRGB <-> CIELAB (D65, 2-degree observer), in numpy, with the constants scikit-image uses.

Arrays: RGB float in [0, 1] (or uint8, divided by 255), shape ``(..., 3)``; LAB ``(..., 3)``
with L in [0, 100] and a, b roughly in [-128, 127]. :mod:`stainbench.baselines.reinhard`
implements the same formulas in torch for the exported graph.
"""

from __future__ import annotations

import numpy as np

#: Linear sRGB -> XYZ (rows X, Y, Z).
XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
RGB_FROM_XYZ = np.linalg.inv(XYZ_FROM_RGB)
#: D65 reference white.
WHITE = np.array([0.95047, 1.0, 1.08883])
EPS = 0.008856
KAPPA = 7.787


def _as_unit(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float64) / 255.0
    return rgb.astype(np.float64)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB of ``rgb`` (uint8 0..255 or float 0..1, shape ``(..., 3)``), float64."""
    c = _as_unit(rgb)
    lin = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = lin @ XYZ_FROM_RGB.T / WHITE
    f = np.where(xyz > EPS, np.cbrt(xyz), KAPPA * xyz + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """sRGB float in [0, 1] (clipped) of CIELAB ``lab`` ``(..., 3)``."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = lab[..., 1] / 500.0 + fy
    fz = np.maximum(fy - lab[..., 2] / 200.0, 0.0)
    f = np.stack([fx, fy, fz], axis=-1)
    xyz = np.where(f**3 > EPS, f**3, (f - 16.0 / 116.0) / KAPPA) * WHITE
    lin = np.maximum(xyz @ RGB_FROM_XYZ.T, 0.0)
    c = np.where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, 12.92 * lin)
    return np.clip(c, 0.0, 1.0)
