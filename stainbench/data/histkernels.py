"""Compiled histogram kernels for the statistics pass (numba, GIL released).

Counting is the statistics pass's hot loop: every stored value increments one bin. numpy's
``np.bincount`` needs int64 indices (a conversion pass), holds the GIL (threads cannot count in
parallel) and costs ~1.4 ns per value here; these loops count uint8/uint16 values directly,
~0.4-0.6 ns per value, and release the GIL, so the pass's threads count in parallel while
others read and decompress (measured in ``benchmarks/data_stats_volume.py``).

The counts are exact integers, identical to ``np.bincount`` (tests compare them). Kernels count
into caller-owned int32 scratch (half the cache footprint of int64 bins: 256 KiB for 65,536
bins); :class:`ChannelCounter` flushes it into int64 totals before an int32 bin could
overflow. Compiled code is cached on disk (``cache=True``), so only the first run on a machine
pays the compilation (~2 s per dtype); a later process loads it in ~0.4 s.
"""

from __future__ import annotations

import numba
import numpy as np

#: Values counted into int32 scratch bins before they are flushed into int64 totals (< 2**31).
FLUSH_VALUES = 1 << 30


@numba.njit(nogil=True, cache=True)
def count_channels(flat: np.ndarray, channels: int, bins: np.ndarray) -> None:  # pragma: no cover
    """Add the values of ``flat`` (1-D, pixel-major: value ``k`` belongs to channel
    ``k % channels``) to ``bins`` (``(channels, n_bins)`` int32 or int64)."""
    if channels == 1:
        row = bins[0]
        for i in range(flat.size):
            row[flat[i]] += 1
        return
    n = flat.size // channels
    for p in range(n):
        base = p * channels
        for c in range(channels):
            bins[c, flat[base + c]] += 1


@numba.njit(nogil=True, cache=True)
def count_items(items: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """Per-item histograms: ``items`` ``(B, P, C)`` C-contiguous, ``out`` ``(B, C, n_bins)``
    int64 (added to)."""
    b, p, c = items.shape
    for k in range(b):
        for i in range(p):
            for j in range(c):
                out[k, j, items[k, i, j]] += 1


class ChannelCounter:
    """Per-channel histogram of values added piece by piece (one counter per thread).

    ``add(x)`` takes any ``(..., C)`` uint8/uint16 array with the counter's channel count
    (non-contiguous views are copied once); :meth:`totals` returns int64 ``(C, n_bins)``.
    """

    def __init__(self, channels: int, n_bins: int) -> None:
        self.channels = channels
        self.totals_ = np.zeros((channels, n_bins), dtype=np.int64)
        self._scratch = np.zeros((channels, n_bins), dtype=np.int32)
        self._pending = 0  # values per channel in the scratch bins

    def add(self, x: np.ndarray) -> None:
        if x.shape[-1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got shape {x.shape}")
        flat = np.ascontiguousarray(x).reshape(-1)
        step = FLUSH_VALUES // self.channels * self.channels
        for start in range(0, flat.size, step):
            piece = flat[start : start + step]
            if self._pending + piece.size // self.channels >= FLUSH_VALUES:
                self._flush()
            count_channels(piece, self.channels, self._scratch)
            self._pending += piece.size // self.channels

    def _flush(self) -> None:
        self.totals_ += self._scratch
        self._scratch[...] = 0
        self._pending = 0

    def totals(self) -> np.ndarray:
        self._flush()
        return self.totals_
