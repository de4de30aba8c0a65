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

- :func:`seeded_integers_into`: the integers ``numpy.random.default_rng(key)`` draws for many
  keys at once (the random crop/flip/rotation of every item of a batch), bit for bit.

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


# -- numpy's default_rng, compiled -----------------------------------------------------------
# Every random patch is drawn from ``default_rng([seed, epoch, index])``: creating that
# generator and drawing four integers costs ~45 us in numpy, ~0.05 us here (identical numbers;
# the tests compare thousands of seeds and ranges against numpy).

# numpy's SeedSequence and PCG64 constants (numpy/random/bit_generator.pyx, pcg64.h)
_INIT_A = np.uint32(0x43B0D7E5)
_MULT_A = np.uint32(0x931E8875)
_INIT_B = np.uint32(0x8B51F9DD)
_MULT_B = np.uint32(0x58F38DED)
_MIX_L = np.uint32(0xCA01F9DD)
_MIX_R = np.uint32(0x4973F715)
_PCG_MUL_HI = np.uint64(2549297995355413924)
_PCG_MUL_LO = np.uint64(4865540595714422341)


@njit(inline="always")
def _mul64(a, b):  # pragma: no cover
    """Full 128-bit product of two uint64 as (hi, lo)."""
    m = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    a0, a1 = a & m, a >> s32
    b0, b1 = b & m, b >> s32
    p00 = a0 * b0
    p01 = a0 * b1
    p10 = a1 * b0
    p11 = a1 * b1
    mid = (p00 >> s32) + (p01 & m) + (p10 & m)
    hi = p11 + (p01 >> s32) + (p10 >> s32) + (mid >> s32)
    lo = (mid << s32) | (p00 & m)
    return hi, lo


@njit(inline="always")
def _step(shi, slo, ihi, ilo):  # pragma: no cover
    """PCG64 state = state * MULT + inc (mod 2**128)."""
    hi, lo = _mul64(slo, _PCG_MUL_LO)
    hi = hi + shi * _PCG_MUL_LO + slo * _PCG_MUL_HI
    lo2 = lo + ilo
    carry = np.uint64(1) if lo2 < lo else np.uint64(0)
    return hi + ihi + carry, lo2


@njit(inline="always")
def _hashmix(value, h):  # pragma: no cover
    """SeedSequence's hashmix (``h`` the running hash constant)."""
    value = np.uint32(value ^ h)
    h = np.uint32(h * _MULT_A)
    value = np.uint32(value * h)
    value = np.uint32(value ^ (value >> np.uint32(16)))
    return value, h


@njit(inline="always")
def _mix(x, y):  # pragma: no cover
    """SeedSequence's mix of two pool words."""
    r = np.uint32(np.uint32(_MIX_L * x) - np.uint32(_MIX_R * y))
    return np.uint32(r ^ (r >> np.uint32(16)))


@njit(cache=True, nogil=True)
def seeded_integers_into(
    words: np.ndarray, nwords: np.ndarray, rngs: np.ndarray, out: np.ndarray
) -> None:  # pragma: no cover
    """``out[i, k]``: draw k of ``numpy.random.default_rng(entropy_i)``, drawn in order as
    ``rng.integers(0, rngs[k] + 1)``: the same numbers, bit for bit.

    ``words``: ``(n, K)`` uint32, item i's entropy as numpy's ``SeedSequence`` coerces it
    (32-bit words, the first ``nwords[i]`` used); ``rngs``: ``(m,)`` uint64 inclusive ranges,
    each < 2**32; ``out``: ``(n, m)`` int64. SeedSequence's hash mixing (pool of 4 words),
    PCG64 seeded from its 4 uint64 state words (XSL-RR output, 32-bit draws buffered as numpy
    does), and Lemire's bounded draw with rejection (no draw for a range of 0).
    """
    n = words.shape[0]
    m = rngs.shape[0]
    pool = np.empty(4, np.uint32)
    st = np.empty(8, np.uint32)
    for it in range(n):
        ne = nwords[it]
        h = _INIT_A
        for i in range(4):
            v = words[it, i] if i < ne else np.uint32(0)
            pool[i], h = _hashmix(v, h)
        for i_src in range(4):
            for i_dst in range(4):
                if i_src != i_dst:
                    hv, h = _hashmix(pool[i_src], h)
                    pool[i_dst] = _mix(pool[i_dst], hv)
        for i_src in range(4, ne):
            for i_dst in range(4):
                hv, h = _hashmix(words[it, i_src], h)
                pool[i_dst] = _mix(pool[i_dst], hv)
        hb = _INIT_B
        for i in range(8):
            v = np.uint32(pool[i % 4] ^ hb)
            hb = np.uint32(hb * _MULT_B)
            v = np.uint32(v * hb)
            st[i] = np.uint32(v ^ (v >> np.uint32(16)))
        s32 = np.uint64(32)
        v0 = np.uint64(st[0]) | (np.uint64(st[1]) << s32)
        v1 = np.uint64(st[2]) | (np.uint64(st[3]) << s32)
        v2 = np.uint64(st[4]) | (np.uint64(st[5]) << s32)
        v3 = np.uint64(st[6]) | (np.uint64(st[7]) << s32)
        # srandom: state = 0; inc = (initseq << 1) | 1; step; state += initstate; step
        ihi = (v2 << np.uint64(1)) | (v3 >> np.uint64(63))
        ilo = (v3 << np.uint64(1)) | np.uint64(1)
        shi, slo = _step(np.uint64(0), np.uint64(0), ihi, ilo)
        lo2 = slo + v1
        carry = np.uint64(1) if lo2 < slo else np.uint64(0)
        shi, slo = shi + v0 + carry, lo2
        shi, slo = _step(shi, slo, ihi, ilo)
        has32 = False
        spare = np.uint32(0)
        for k in range(m):
            rng = rngs[k]
            if rng == 0:
                out[it, k] = 0
                continue
            rng_excl = np.uint64(rng + np.uint64(1))
            threshold = np.uint64((np.uint64(0xFFFFFFFF) - rng) % rng_excl)
            first = True
            while True:
                # next_uint32
                if has32:
                    has32 = False
                    r32 = spare
                else:
                    shi, slo = _step(shi, slo, ihi, ilo)
                    x = shi ^ slo
                    rot = shi >> np.uint64(58)
                    nxt = (x >> rot) | (x << ((np.uint64(64) - rot) & np.uint64(63)))
                    has32 = True
                    spare = np.uint32(nxt >> s32)
                    r32 = np.uint32(nxt & np.uint64(0xFFFFFFFF))
                mm = np.uint64(r32) * rng_excl
                left = mm & np.uint64(0xFFFFFFFF)
                if first and left >= rng_excl:
                    break
                first = False
                if left >= threshold:
                    break
            out[it, k] = np.int64(mm >> s32)
