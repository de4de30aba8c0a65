"""Compiled loops (numba) of the patch pipeline: the batch transform and the normalization.

- :func:`transform_into`: crop, flip/rotate and move channels first for a batch of
  channels-last tiles, one pass over the patch pixels (a flip/rotation is an affine map of
  indices, see :func:`~stainbench.data.augment.source_affine`). Codes that keep the source
  rows as output rows read them with a constant stride (forwards or backwards), which the
  compiler vectorizes; transposing codes (rotations by 90 and 270 degrees) gather in blocks
  of 64 output columns so that the source rows they read stay in the cache. Exact (a copy).
  8-bit RGB patches whose side is a multiple of 8 (the common case) take a faster route,
  :func:`_rgb_u8`: every code is "de-interleave whole source rows into three planes (forwards
  or backwards)", which the compiler vectorizes (unsigned indices, no wrap-around checks),
  followed for the transposing codes by a byte transpose of each plane in 8 x 8 blocks held in
  eight 64-bit words (three rounds of masked swaps). 3-4x faster than the gather above.
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


_U1 = np.uint64(1)
_U2 = np.uint64(2)
_U3 = np.uint64(3)
_M8 = np.uint64(0x00FF00FF00FF00FF)
_M16 = np.uint64(0x0000FFFF0000FFFF)
_M32 = np.uint64(0x00000000FFFFFFFF)
_S8 = np.uint64(8)
_S16 = np.uint64(16)
_S32 = np.uint64(32)


@njit(inline="always")
def _swap(a: np.uint64, b: np.uint64, shift: np.uint64, mask: np.uint64):  # pragma: no cover
    """Exchange the odd ``shift``-bit units of ``a`` with the even ones of ``b``."""
    t = ((a >> shift) ^ b) & mask
    return a ^ (t << shift), b ^ t


@njit(cache=True, nogil=True, boundscheck=False)
def _transpose_u8(src: np.ndarray, dst: np.ndarray) -> None:  # pragma: no cover
    """``dst = src.T`` for square byte planes seen as ``(P, P // 8)`` uint64 words: each 8 x 8
    block is eight words, transposed by three rounds of masked swaps (1, 2, 4 bytes)."""
    nb = src.shape[1]
    for bi in range(nb):
        for bj in range(nb):
            r = 8 * bj
            x0, x1, x2, x3 = src[r, bi], src[r + 1, bi], src[r + 2, bi], src[r + 3, bi]
            x4, x5, x6, x7 = src[r + 4, bi], src[r + 5, bi], src[r + 6, bi], src[r + 7, bi]
            x0, x1 = _swap(x0, x1, _S8, _M8)
            x2, x3 = _swap(x2, x3, _S8, _M8)
            x4, x5 = _swap(x4, x5, _S8, _M8)
            x6, x7 = _swap(x6, x7, _S8, _M8)
            x0, x2 = _swap(x0, x2, _S16, _M16)
            x1, x3 = _swap(x1, x3, _S16, _M16)
            x4, x6 = _swap(x4, x6, _S16, _M16)
            x5, x7 = _swap(x5, x7, _S16, _M16)
            x0, x4 = _swap(x0, x4, _S32, _M32)
            x1, x5 = _swap(x1, x5, _S32, _M32)
            x2, x6 = _swap(x2, x6, _S32, _M32)
            x3, x7 = _swap(x3, x7, _S32, _M32)
            o = 8 * bi
            dst[o, bj], dst[o + 1, bj], dst[o + 2, bj], dst[o + 3, bj] = x0, x1, x2, x3
            dst[o + 4, bj], dst[o + 5, bj], dst[o + 6, bj], dst[o + 7, bj] = x4, x5, x6, x7


# Not inlined into _rgb_u8: compiled as separate functions, LLVM vectorizes these loops
# however the caller walks the source rows (inlined, rows walked backwards were not: 8x slower).
@njit(cache=True, nogil=True, boundscheck=False)
def _planes_fwd(s, start, o, d0, plane, n):  # pragma: no cover
    """``o[c * plane + d0 + j] = s[start + 3 j + c]`` for j < n (unsigned: vectorized)."""
    for j in range(n):
        u = np.uint64(j)
        k = start + _U3 * u
        o[d0 + u] = s[k]
        o[plane + d0 + u] = s[k + _U1]
        o[_U2 * plane + d0 + u] = s[k + _U2]


@njit(cache=True, nogil=True, boundscheck=False)
def _planes_rev(s, start, o, d0, plane, n):  # pragma: no cover
    """``o[c * plane + d0 + n - 1 - j] = s[start + 3 j + c]`` for j < n."""
    last = d0 + n - _U1
    for j in range(n):
        u = np.uint64(j)
        k = start + _U3 * u
        o[last - u] = s[k]
        o[plane + last - u] = s[k + _U1]
        o[_U2 * plane + last - u] = s[k + _U2]


@njit(cache=True, nogil=True, boundscheck=False)
def _rgb_u8(src: np.ndarray, affine: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """8-bit RGB, P a multiple of 8: row de-interleave (+ plane transpose), see module doc."""
    nb, _, p, _ = out.shape
    n = np.uint64(p)
    plane = np.uint64(p * p)
    tmp = np.empty((3, p, p), dtype=np.uint8)
    for b in range(nb):
        s = src[b]
        base, si, sj = affine[b, 0], affine[b, 1], affine[b, 2]
        transpose = sj != 3 and sj != -3
        # planar row r comes from source row start + r * row_step, pixels col_step apart
        row_step, col_step = (sj, si) if transpose else (si, sj)
        first = np.uint64(base if col_step > 0 else base - 3 * (p - 1))
        step = np.uint64(row_step)  # modulo 2**64: negative steps walk backwards
        dst = tmp.reshape(-1) if transpose else out[b].reshape(-1)
        for r in range(p):
            start = first + np.uint64(r) * step
            d0 = np.uint64(r * p)
            if col_step > 0:
                _planes_fwd(s, start, dst, d0, plane, n)
            else:
                _planes_rev(s, start, dst, d0, plane, n)
        if transpose:
            for c in range(3):
                _transpose_u8(tmp[c].view(np.uint64), out[b, c].view(np.uint64))


def transform_into(src: np.ndarray, affine: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out`` ``(B, C, P, P)`` from ``src`` ``(B, L)`` (flat channels-last tiles, same
    dtype): ``out[b, c, i, j] = src[b, base + i * si + j * sj + c]`` with
    ``affine[b] = (base, si, sj)`` (int64 ``(B, 3)``); ``out`` C-contiguous."""
    if out.shape[1] == 3 and out.dtype == np.uint8 and out.shape[2] % 8 == 0:
        _rgb_u8(src, affine, out)
    elif out.shape[1] == 3:
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
