"""Macenko stain normalization in plain numpy (no other imports: this file is also copied
next to the python-backend ``model.py`` of the served ``macenko`` model).

Macenko et al. (2009), "A method for normalizing histology slides for quantitative
analysis". For each tile:

1. optical density ``OD = -log((I + 1) / Io)`` per pixel and channel (``Io``: background
   intensity, 240 by default);
2. drop near-transparent pixels (any channel's OD < ``beta``);
3. the plane of the two largest eigenvectors of the OD covariance; the angle of each pixel's
   projection; the ``alpha`` and ``100 - alpha`` percentile angles give the two stain vectors
   (haematoxylin first: the one with the larger red OD);
4. stain concentrations by least squares; their 99th percentiles;
5. rebuild the tile with the *target* stain matrix, concentrations rescaled so that their
   99th percentiles equal the target's.

The target (stain matrix and maximum concentrations) is fitted once on reference tiles of the
target domain (:func:`fit_macenko`). Tiles without enough tissue are returned unchanged.

Arrays: tiles uint8 ``(B, H, W, 3)`` RGB; stain matrix float ``(3, 2)`` (columns H, E, unit
length, OD units); concentrations float ``(2,)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Fewer tissue pixels than this and a tile is left as it is.
MIN_TISSUE_PIXELS = 16


@dataclass(frozen=True)
class MacenkoTarget:
    """Target stain matrix ``(3, 2)`` (H and E columns) and 99th-percentile concentrations."""

    stain_matrix: tuple[tuple[float, float], ...]
    max_conc: tuple[float, float]
    io: float = 240.0
    alpha: float = 1.0
    beta: float = 0.15

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "macenko",
            "stain_matrix": [list(r) for r in self.stain_matrix],
            "max_conc": list(self.max_conc),
            "io": self.io,
            "alpha": self.alpha,
            "beta": self.beta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MacenkoTarget:
        return cls(
            stain_matrix=tuple(tuple(float(v) for v in r) for r in d["stain_matrix"]),
            max_conc=(float(d["max_conc"][0]), float(d["max_conc"][1])),
            io=float(d.get("io", 240.0)),
            alpha=float(d.get("alpha", 1.0)),
            beta=float(d.get("beta", 0.15)),
        )


def optical_density(pixels: np.ndarray, io: float) -> np.ndarray:
    """OD ``(N, 3)`` float64 of uint8 RGB pixels ``(N, 3)``."""
    return -np.log((pixels.astype(np.float64) + 1.0) / io)


def estimate_stains(od: np.ndarray, alpha: float, beta: float) -> np.ndarray | None:
    """Stain matrix ``(3, 2)`` (H, E columns) from OD pixels ``(N, 3)``; None without tissue."""
    tissue = od[np.all(od >= beta, axis=1)]
    if len(tissue) < MIN_TISSUE_PIXELS:
        return None
    _, vecs = np.linalg.eigh(np.cov(tissue.T))
    plane = vecs[:, 1:3]  # the two largest eigenvalues (eigh sorts ascending)
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # point into positive OD
    proj = tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100.0 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v1, v2], axis=1) if v1[0] > v2[0] else np.stack([v2, v1], axis=1)
    stains = np.abs(stains)
    return stains / np.linalg.norm(stains, axis=0, keepdims=True)


def concentrations(od: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """Least-squares stain concentrations ``(N, 2)`` of OD pixels ``(N, 3)``."""
    return np.linalg.lstsq(stains, od.T, rcond=None)[0].T


def fit_macenko(
    tiles: np.ndarray, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15
) -> MacenkoTarget:
    """Target stain matrix and 99th-percentile concentrations of reference ``tiles``
    (uint8 ``(N, H, W, 3)``), pooled over every pixel. ValueError without enough tissue."""
    od = optical_density(tiles.reshape(-1, 3), io)
    stains = estimate_stains(od, alpha, beta)
    if stains is None:
        raise ValueError("reference tiles hold too little tissue to estimate stain vectors")
    c = concentrations(od, stains)
    max_c = np.percentile(c, 99, axis=0)
    return MacenkoTarget(
        stain_matrix=tuple(tuple(float(v) for v in row) for row in stains),
        max_conc=(float(max_c[0]), float(max_c[1])),
        io=io,
        alpha=alpha,
        beta=beta,
    )


def macenko_tile(tile: np.ndarray, target: MacenkoTarget) -> np.ndarray:
    """One uint8 ``(H, W, 3)`` tile normalized to ``target`` (unchanged without tissue)."""
    od = optical_density(tile.reshape(-1, 3), target.io)
    stains = estimate_stains(od, target.alpha, target.beta)
    if stains is None:
        return tile.copy()
    c = concentrations(od, stains)
    max_c = np.maximum(np.percentile(c, 99, axis=0), 1e-6)
    c = c * (np.asarray(target.max_conc) / max_c)
    rgb = target.io * np.exp(-c @ np.asarray(target.stain_matrix).T)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(tile.shape)


def macenko_transfer(tiles: np.ndarray, target: MacenkoTarget) -> np.ndarray:
    """uint8 ``(B, H, W, 3)`` -> uint8 ``(B, H, W, 3)``, each tile normalized on its own."""
    if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"tiles must be uint8 (B, H, W, 3), got {tiles.dtype} {tiles.shape}")
    return np.stack([macenko_tile(t, target) for t in tiles])
