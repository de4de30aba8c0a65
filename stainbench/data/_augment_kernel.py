"""Compiled loops (numba) of the patch pipeline: the batch transform and the normalization.

- :func:`transform_into`: crop, flip/rotate and move channels first for a batch of
  channels-last tiles, one pass over the patch pixels (a flip/rotation is an affine map of
  indices, see :func:`~stainbench.data.augment.source_affine`). Codes that keep the source
  rows as output rows read them with a constant stride (forwards or backwards), which the
  compiler vectorizes; transposing codes (rotations by 90 and 270 degrees) gather in blocks
  of 64 output columns so that the source rows they read stay in the cache. Exact (a copy).
- :func:`normalize_into`: ``float32(x) - offset`` rounded to float32, then ``/ scale`` rounded
  to float32, per batch item and channel over contiguous values: the float32 operations of
  :meth:`~stainbench.data.transforms.Normalization.forward` element by element (IEEE
  subtraction and division, no fast-math), so bit-identical; vectorized by the compiler.

Compiled on first use per dtype and cached on disk (numba's ``cache=True``, next to this
module), so later processes load them in a fraction of a second.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_BLOCK = 64


@njit(cache=True, nogil=True, boundscheck=False)
def _rgb(src: np.ndarray, affine: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    nb, _, p, _ = out.shape
    for b in range(nb):
        s = src[b]
        o0, o1, o2 = out[b, 0], out[b, 1], out[b, 2]
        base, si, sj = affine[b, 0], affine[b, 1], affine[b, 2]
        if sj == 3:  # output rows = source rows, forwards
            for i in range(p):
                start = base + i * si
                row = s[start : start + 3 * p]
                r0, r1, r2 = o0[i], o1[i], o2[i]
                for j in range(p):
                    r0[j] = row[3 * j]
                    r1[j] = row[3 * j + 1]
                    r2[j] = row[3 * j + 2]
        elif sj == -3:  # output rows = source rows, backwards
            for i in range(p):
                start = base + i * si - 3 * (p - 1)
                row = s[start : start + 3 * p]
                r0, r1, r2 = o0[i], o1[i], o2[i]
                for j in range(p):
                    k = 3 * (p - 1 - j)
                    r0[j] = row[k]
                    r1[j] = row[k + 1]
                    r2[j] = row[k + 2]
        else:  # output rows = source columns
            for j0 in range(0, p, _BLOCK):
                j1 = min(j0 + _BLOCK, p)
                for i in range(p):
                    start = base + i * si
                    r0, r1, r2 = o0[i], o1[i], o2[i]
                    for j in range(j0, j1):
                        k = np.uint64(start + j * sj)
                        r0[j] = s[k]
                        r1[j] = s[k + np.uint64(1)]
                        r2[j] = s[k + np.uint64(2)]


@njit(cache=True, nogil=True, boundscheck=False)
def _any(src: np.ndarray, affine: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    nb, cn, p, _ = out.shape
    for b in range(nb):
        s = src[b]
        base, si, sj = affine[b, 0], affine[b, 1], affine[b, 2]
        block = p if abs(sj) <= cn else _BLOCK
        for j0 in range(0, p, block):
            j1 = min(j0 + block, p)
            for i in range(p):
                start = base + i * si
                for c in range(cn):
                    oc = out[b, c, i]
                    for j in range(j0, j1):
                        oc[j] = s[np.uint64(start + j * sj + c)]


def transform_into(src: np.ndarray, affine: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out`` ``(B, C, P, P)`` from ``src`` ``(B, L)`` (flat channels-last tiles, same
    dtype): ``out[b, c, i, j] = src[b, base + i * si + j * sj + c]`` with
    ``affine[b] = (base, si, sj)`` (int64 ``(B, 3)``)."""
    if out.shape[1] == 3:
        _rgb(src, affine, out)
    else:
        _any(src, affine, out)


@njit(cache=True, nogil=True, boundscheck=False)
def normalize_into(x: np.ndarray, params: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """``out[b, c] = (float32(x[b, c]) - params[b, 0, c]) / params[b, 1, c]`` in float32.

    ``x``: ``(B, C, L)`` integers, ``params``: float32 ``(B, 2, C)``, ``out``: float32
    ``(B, C, L)``; all C-contiguous.
    """
    nb, cn, n = x.shape
    for b in range(nb):
        for c in range(cn):
            off = params[b, 0, c]
            scale = params[b, 1, c]
            xi = x[b, c]
            oi = out[b, c]
            for k in range(n):
                oi[k] = np.float32(np.float32(np.float32(xi[k]) - off) / scale)
