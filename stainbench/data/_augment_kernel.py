"""The compiled uint8 pass of :func:`stainbench.data.augment.augment_normalize` (numba).

One pass over each patch's pixels: gather the transformed source pixel (flip/rotation as an
affine map of indices, see :func:`~stainbench.data.augment.source_affine`), look its
normalized float32 value up in a 256-entry table per channel, write it channels first. The
table entries are computed with the float32 operations of
:meth:`~stainbench.data.transforms.Normalization.forward` (``float32(v) - offset``, rounded to
float32, then ``/ scale``, rounded to float32), so the output is bit-identical to the
arithmetic path. Transposing codes (rotations by 90 and 270 degrees) walk the source in
blocks of 64 output columns so that the rows they read stay in the cache.

Compiled on first use and cached on disk (numba's ``cache=True``, next to this module).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_BLOCK = 64


@njit(cache=True, nogil=True, boundscheck=False)
def _tables(params: np.ndarray, b: int, lut: np.ndarray) -> None:
    """``lut[c, v] = (float32(v) - offset[c]) / scale[c]`` in float32 for patch ``b``."""
    for c in range(lut.shape[0]):
        off = params[b, 0, c]
        scale = params[b, 1, c]
        for v in range(256):
            lut[c, v] = np.float32(np.float32(np.float32(v) - off) / scale)


@njit(cache=True, nogil=True, boundscheck=False)
def _rgb(src: np.ndarray, affine: np.ndarray, params: np.ndarray, out: np.ndarray) -> None:
    """Three channels, unrolled (the common case)."""
    nb, _, p, _ = out.shape
    lut = np.empty((3, 256), np.float32)
    for b in range(nb):
        s = src[b]
        o0, o1, o2 = out[b, 0], out[b, 1], out[b, 2]
        _tables(params, b, lut)
        l0, l1, l2 = lut[0], lut[1], lut[2]
        base, si, sj = affine[b, 0], affine[b, 1], affine[b, 2]
        block = p if abs(sj) <= 3 else _BLOCK  # along source rows, or across them
        for j0 in range(0, p, block):
            j1 = min(j0 + block, p)
            for i in range(p):
                row = base + i * si
                for j in range(j0, j1):
                    k = np.uint64(row + j * sj)
                    o0[i, j] = l0[s[k]]
                    o1[i, j] = l1[s[k + np.uint64(1)]]
                    o2[i, j] = l2[s[k + np.uint64(2)]]


@njit(cache=True, nogil=True, boundscheck=False)
def _any(src: np.ndarray, affine: np.ndarray, params: np.ndarray, out: np.ndarray) -> None:
    """Any number of channels."""
    nb, cn, p, _ = out.shape
    lut = np.empty((cn, 256), np.float32)
    for b in range(nb):
        s = src[b]
        _tables(params, b, lut)
        base, si, sj = affine[b, 0], affine[b, 1], affine[b, 2]
        block = p if abs(sj) <= cn else _BLOCK
        for j0 in range(0, p, block):
            j1 = min(j0 + block, p)
            for i in range(p):
                row = base + i * si
                for c in range(cn):
                    lc = lut[c]
                    oc = out[b, c, i]
                    for j in range(j0, j1):
                        oc[j] = lc[s[np.uint64(row + j * sj + c)]]


def augment_normalize_u8(
    src: np.ndarray, affine: np.ndarray, params: np.ndarray, out: np.ndarray
) -> None:
    """Fill ``out`` (B, C, P, P) float32 from ``src`` (B, P*P*C) uint8 channels-last patches.

    ``affine``: int64 ``(B, 3)`` rows ``(base, si, sj)``; ``params``: float32 ``(B, 2, C)``.
    """
    if out.shape[1] == 3:
        _rgb(src, affine, params, out)
    else:
        _any(src, affine, params, out)
