"""Patch sampling: crop position, horizontal flip and 90-degree rotation, drawn once and
applied identically to both sides of a pair.

The eight combinations of ``flip`` and ``rot90`` (k = 0..3) are the whole dihedral group, so
a vertical flip needs no separate flag. The transform is "flip the x axis, then rotate by
k x 90 degrees in the (y, x) plane" (``numpy.rot90(..., k, axes=(y, x))``); its integer
``code`` is ``rot90 + 4 * flip`` (0 = identity).

:func:`apply_params` transforms one patch with numpy (the reference); :func:`transform_batch`
crops, transforms and moves channels first for a whole batch of tiles in one compiled pass
(what the tile datasets use: numpy's strided byte copies with an inner dimension of 3 cost
more than decoding the tile).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stainbench.data.fastread import out_problem
from stainbench.errors import DataError

#: Number of transform codes (the dihedral group of the square).
N_CODES = 8


@dataclass(frozen=True)
class PatchParams:
    """Where to crop (top-left ``y``, ``x``) and how to transform one patch."""

    y: int
    x: int
    flip: bool = False
    rot90: int = 0

    @property
    def code(self) -> int:
        """The transform as one integer 0..7: ``rot90 + 4 * flip``."""
        return int(self.rot90) % 4 + 4 * int(bool(self.flip))


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


def seeded_integers(keys: Sequence[Sequence[int]], highs: Sequence[int]) -> np.ndarray:
    """For each key: ``rng = numpy.random.default_rng(list(key))`` and
    ``[rng.integers(0, h) for h in highs]``, as one ``(len(keys), len(highs))`` int64 array.

    The same numbers as numpy (a compiled re-implementation of numpy's ``SeedSequence``,
    ``PCG64`` and bounded draws, ~1000x faster than creating the generators; numpy itself
    where numba is missing, a key holds a negative or >= 2**64 value, or a high > 2**32).
    ``highs``: each >= 1.
    """
    n, m = len(keys), len(highs)
    out = np.empty((n, m), dtype=np.int64)
    kernel = _kernel("draw")
    words = _entropy_words(keys) if kernel is not None else None
    if words is None or not all(1 <= int(h) <= 2**32 for h in highs):
        for i, key in enumerate(keys):
            rng = np.random.default_rng([int(v) for v in key])
            out[i] = [rng.integers(0, int(h)) for h in highs]
        return out
    rngs = np.asarray([int(h) - 1 for h in highs], dtype=np.uint64)
    kernel(words[0], words[1], rngs, out)
    return out


def _entropy_words(keys: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray] | None:
    """Keys as numpy's SeedSequence coerces them: each value one 32-bit word (0 included), or
    two (low first) from 2**32; None for values this does not cover (numpy decides)."""
    if not keys:
        return np.zeros((0, 1), dtype=np.uint32), np.zeros(0, dtype=np.int64)
    try:
        vals = np.asarray(keys, dtype=np.int64)  # ragged keys raise ValueError
    except (OverflowError, TypeError, ValueError):
        return None
    if vals.ndim != 2:
        return None
    if (vals < 0).any():
        return None
    if (vals < 2**32).all():
        return vals.astype(np.uint32), np.full(len(keys), vals.shape[1], dtype=np.int64)
    n, k = vals.shape
    words = np.zeros((n, 2 * k), dtype=np.uint32)
    counts = np.zeros(n, dtype=np.int64)
    for i in range(n):
        c = 0
        for v in (int(x) for x in vals[i]):
            words[i, c] = v & 0xFFFFFFFF
            c += 1
            if v >> 32:
                words[i, c] = v >> 32
                c += 1
        counts[i] = c
    return words, counts


def sample_params_batch(
    keys: Sequence[Sequence[int]] | None, n: int, height: int, width: int, patch: int
) -> list[PatchParams]:
    """:func:`sample_params` for ``n`` patches, ``rng = default_rng(key)`` for each key (the
    same parameters, drawn together); ``keys=None``: ``n`` centred crops, no transform."""
    if keys is None:
        return [sample_params(None, height, width, patch)] * n
    sample_params(None, height, width, patch)  # validates the sizes
    draws = seeded_integers(keys, (height - patch + 1, width - patch + 1, 2, 4))
    return [PatchParams(int(y), int(x), bool(f), int(r)) for y, x, f, r in draws.tolist()]


def crop(tile: np.ndarray, params: PatchParams, patch: int) -> np.ndarray:
    """The untransformed ``(..., P, P, C)`` crop of a channels-last tile, as a view."""
    return tile[..., params.y : params.y + patch, params.x : params.x + patch, :]


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


def source_affine(code: int, size: int, row_stride: int, pixel_stride: int) -> tuple[int, int, int]:
    """Where output pixel ``(i, j)`` of a transformed ``size`` x ``size`` patch comes from.

    Returns ``(base, si, sj)``: the source element of output ``(c, i, j)`` is
    ``base + i * si + j * sj + c`` for a channels-last source with the given strides (in
    elements). ``code`` as :attr:`PatchParams.code`.
    """
    flip, k = code >= 4, code % 4
    last = size - 1
    # source (row a, column b) of the flipped patch as a0 + ai*i + aj*j, b0 + bi*i + bj*j
    a0, ai, aj, b0, bi, bj = (
        (0, 1, 0, 0, 0, 1),  # identity
        (0, 0, 1, last, -1, 0),  # rot90 k=1: r[i, j] = f[j, P-1-i]
        (last, -1, 0, last, 0, -1),  # k=2: r[i, j] = f[P-1-i, P-1-j]
        (last, 0, -1, 0, 1, 0),  # k=3: r[i, j] = f[P-1-j, i]
    )[k]
    if flip:  # f[a, b] = patch[a, P-1-b]
        b0, bi, bj = last - b0, -bi, -bj
    return (
        a0 * row_stride + b0 * pixel_stride,
        ai * row_stride + bi * pixel_stride,
        aj * row_stride + bj * pixel_stride,
    )


def transform_batch(
    tiles: np.ndarray, params: list[PatchParams], patch: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Crop, flip/rotate and move channels first, for a batch of channels-last tiles.

    ``tiles``: ``(B, H, W, C)`` (any dtype); ``params``: one :class:`PatchParams` per tile;
    ``patch``: P. Returns a C-contiguous ``(B, C, P, P)`` array of ``tiles``' dtype, equal
    to :func:`apply_params` on each crop (a compiled pass when numba is installed; otherwise
    :func:`apply_params` per tile): a new one, or ``out`` (a writeable C-contiguous array of
    that shape and dtype, e.g. a batch slot in shared memory) filled in place.
    """
    b, h, w, c = tiles.shape
    if len(params) != b:
        raise DataError(f"{len(params)} patch parameters for {b} tiles")
    for par in params:
        if not (0 <= par.y <= h - patch and 0 <= par.x <= w - patch):
            raise DataError(f"patch {patch} at ({par.y}, {par.x}) is outside the {h}x{w} tiles")
    if out is None:
        out = np.empty((b, c, patch, patch), dtype=tiles.dtype)
    elif problem := out_problem(out, (b, c, patch, patch), tiles.dtype):
        raise DataError(f"transform_batch: {problem}")
    kernel = _kernel("transform")
    if kernel is None or b == 0:
        for j, par in enumerate(params):
            out[j] = apply_params(crop(tiles[j], par, patch), par)
        return out
    affine = np.empty((b, 3), dtype=np.int64)
    for j, par in enumerate(params):
        base, si, sj = source_affine(par.code, patch, w * c, c)
        affine[j] = (base + par.y * w * c + par.x * c, si, sj)
    kernel(np.ascontiguousarray(tiles).reshape(b, h * w * c), affine, out)
    return out


_KERNELS: dict[str, Any] = {}


def _kernel(name: str = "transform") -> Any:
    """A compiled loop (``transform``, ``draw``, ``normalize``), or None where numba is not
    installed."""
    if name not in _KERNELS:
        try:
            from stainbench.data import _augment_kernel as k
        except ImportError:  # numba missing: numpy gives the same, slower
            k = None
        _KERNELS.setdefault("transform", k.transform_into if k is not None else None)
        _KERNELS.setdefault("draw", k.seeded_integers_into if k is not None else None)
        _KERNELS.setdefault("normalize", k.normalize_into if k is not None else None)
    return _KERNELS[name]
