"""Patch sampling: crop position, horizontal flip and 90-degree rotation, drawn once and
applied identically to both sides of a pair.

The eight combinations of ``flip`` and ``rot90`` (k = 0..3) are the whole dihedral group, so
a vertical flip needs no separate flag.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stainbench.errors import DataError


@dataclass(frozen=True)
class PatchParams:
    """Where to crop (top-left ``y``, ``x``) and how to transform one patch."""

    y: int
    x: int
    flip: bool = False
    rot90: int = 0


def sample_params(
    rng: np.random.Generator | None, height: int, width: int, patch: int
) -> PatchParams:
    """Random crop + flip + rotation from ``rng``; ``rng=None``: centred crop, no transform.

    ``height``/``width``: tile size in pixels; ``patch``: square patch side, <= both.
    """
    if patch > height or patch > width:
        raise DataError(f"patch size {patch} is larger than the tiles ({height}x{width})")
    if rng is None:
        return PatchParams((height - patch) // 2, (width - patch) // 2)
    y = int(rng.integers(0, height - patch + 1))
    x = int(rng.integers(0, width - patch + 1))
    return PatchParams(y, x, bool(rng.integers(0, 2)), int(rng.integers(0, 4)))


def apply_params(patch: np.ndarray, params: PatchParams) -> np.ndarray:
    """Flip/rotate an already cropped patch in its (y, x) plane and move channels first.

    ``(P, P, C)`` gives a contiguous ``(C, P, P)``; ``(D, P, P, C)`` gives ``(C, D, P, P)``.
    """
    out = patch
    if params.flip:
        out = out[..., ::-1, :]
    if params.rot90:
        out = np.rot90(out, k=params.rot90, axes=(-3, -2))
    return np.ascontiguousarray(np.moveaxis(out, -1, 0))
