"""Compiled histogram kernels for the statistics pass (machine code via llvmlite, GIL released).

Counting is the statistics pass's hot loop: every stored value increments one bin. numpy's
``np.bincount`` needs int64 indices (a conversion pass), holds the GIL (threads cannot count in
parallel) and costs ~1.4 ns per value here; these loops count uint8/uint16 values directly,
~0.4-0.5 ns per value, and release the GIL, so the pass's threads count in parallel while
others read and decompress (measured in ``benchmarks/data_stats_volume.py``).

The loops are a few lines of LLVM IR (below) compiled in-process by llvmlite, the LLVM binding
numba itself is built on, and called through ctypes (which releases the GIL). They were numba
functions before; numba's start-up in a fresh process (import, typing registries, loading the
cached machine code) held the GIL for ~0.45 s, 15% of a 4 GB pass, while importing llvmlite and
compiling these loops takes ~0.06 s, once per process, on first use.

The counts are exact integers, identical to ``np.bincount`` (tests compare them). Kernels count
into caller-owned int32 scratch (half the cache footprint of int64 bins: 256 KiB for 65,536
bins); :class:`ChannelCounter` flushes it into int64 totals before an int32 bin could
overflow. Every call checks dtypes, shapes and contiguity first: the machine code itself does
no bounds checks, so a value can never index past its bins (a uint8/uint16 value is < 256 /
65,536 and the bins are checked to have at least that many columns).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

#: Values counted into int32 scratch bins before they are flushed into int64 totals (< 2**31).
FLUSH_VALUES = 1 << 30

# One function per (value type, bin type): ``values`` holds ``n`` pixels of ``channels``
# values each, pixel-major (value ``k`` belongs to channel ``k % channels``); channel ``c``'s
# bins start at ``bins + c * stride`` (``stride``: bins per channel). Typed-pointer syntax
# parses on every LLVM that llvmlite >= 0.42 ships (14 to 20).
_IR = """
define void @{name}({v}* noalias nocapture readonly %values, i64 %n, i64 %channels,
                    {b}* noalias nocapture %bins, i64 %stride) nounwind {{
entry:
  %single = icmp eq i64 %channels, 1
  %any = icmp sgt i64 %n, 0
  br i1 %any, label %choose, label %done
choose:
  br i1 %single, label %one, label %pixel
one:                                            ; one channel: bins[values[i]] += 1
  %i = phi i64 [0, %choose], [%i.next, %one]
  %p = getelementptr inbounds {v}, {v}* %values, i64 %i
  %x = load {v}, {v}* %p, align 1
  %xi = zext {v} %x to i64
  %bp = getelementptr inbounds {b}, {b}* %bins, i64 %xi
  %old = load {b}, {b}* %bp
  %new = add {b} %old, 1
  store {b} %new, {b}* %bp
  %i.next = add nuw nsw i64 %i, 1
  %more = icmp slt i64 %i.next, %n
  br i1 %more, label %one, label %done
pixel:                                          ; several channels, pixel by pixel
  %px = phi i64 [0, %choose], [%px.next, %pixel.end]
  %base = mul nuw nsw i64 %px, %channels
  br label %channel
channel:                                        ; bins[c * stride + values[px * C + c]] += 1
  %c = phi i64 [0, %pixel], [%c.next, %channel]
  %k = add nuw nsw i64 %base, %c
  %q = getelementptr inbounds {v}, {v}* %values, i64 %k
  %y = load {v}, {v}* %q, align 1
  %yi = zext {v} %y to i64
  %row = mul nuw nsw i64 %c, %stride
  %at = add nuw nsw i64 %row, %yi
  %bq = getelementptr inbounds {b}, {b}* %bins, i64 %at
  %o = load {b}, {b}* %bq
  %w = add {b} %o, 1
  store {b} %w, {b}* %bq
  %c.next = add nuw nsw i64 %c, 1
  %cmore = icmp slt i64 %c.next, %channels
  br i1 %cmore, label %channel, label %pixel.end
pixel.end:
  %px.next = add nuw nsw i64 %px, 1
  %pmore = icmp slt i64 %px.next, %n
  br i1 %pmore, label %pixel, label %done
done:
  ret void
}}
"""
_VALUE_TYPES = {np.dtype(np.uint8): "i8", np.dtype(np.uint16): "i16"}
_BIN_TYPES = {np.dtype(np.int32): "i32", np.dtype(np.int64): "i64"}
_SIGNATURE = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64
)
_lock = threading.Lock()
_compiled: dict[tuple[np.dtype, np.dtype], Callable[..., None]] = {}
_keep: list[Any] = []  # the execution engines: the machine code lives as long as they do


def _kernel(values: np.dtype, bins: np.dtype) -> Callable[..., None]:
    """The compiled loop for ``values`` (uint8/uint16) into ``bins`` (int32/int64).

    All four are compiled together on the first call in a process (thread-safe) and kept."""
    key = (values, bins)
    fn = _compiled.get(key)
    if fn is not None:
        return fn
    with _lock:
        if not _compiled:
            _compiled.update(_compile())
    return _compiled[key]


def _compile() -> dict[tuple[np.dtype, np.dtype], Callable[..., None]]:
    import llvmlite.binding as llvm

    with contextlib.suppress(RuntimeError):  # llvmlite < 0.45 needs it; later ones refuse it
        llvm.initialize()
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    names = {
        (vt, bt): f"count_{_VALUE_TYPES[vt]}_{_BIN_TYPES[bt]}"
        for vt in _VALUE_TYPES
        for bt in _BIN_TYPES
    }
    source = "".join(
        _IR.format(name=name, v=_VALUE_TYPES[vt], b=_BIN_TYPES[bt])
        for (vt, bt), name in names.items()
    )
    module = llvm.parse_assembly(source)
    module.verify()
    target = llvm.Target.from_default_triple()
    machine = target.create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3
    )
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    _keep.append(engine)
    return {key: _SIGNATURE(engine.get_function_address(name)) for key, name in names.items()}


def count_channels(flat: np.ndarray, channels: int, bins: np.ndarray) -> None:
    """Add the values of ``flat`` (1-D uint8/uint16, pixel-major: value ``k`` belongs to
    channel ``k % channels``; a multiple of ``channels`` long) to ``bins`` (C-contiguous
    ``(channels, n_bins)`` int32 or int64, ``n_bins`` >= 256 / 65,536). Releases the GIL."""
    if flat.dtype not in _VALUE_TYPES or flat.ndim != 1 or not flat.flags.c_contiguous:
        raise ValueError(f"values must be 1-D contiguous uint8/uint16, got {flat.dtype}")
    if bins.dtype not in _BIN_TYPES or not bins.flags.c_contiguous or not bins.flags.writeable:
        raise ValueError(f"bins must be writeable C-contiguous int32/int64, got {bins.dtype}")
    if channels < 1 or flat.size % channels:
        raise ValueError(f"{flat.size} values are not whole pixels of {channels} channels")
    need = 1 << (8 * flat.dtype.itemsize)
    if bins.ndim != 2 or bins.shape[0] != channels or bins.shape[1] < need:
        raise ValueError(f"bins must be ({channels}, >= {need}), got {bins.shape}")
    if flat.size:
        kernel = _kernel(flat.dtype, bins.dtype)
        kernel(flat.ctypes.data, flat.size // channels, channels, bins.ctypes.data, bins.shape[1])


def count_items(items: np.ndarray, out: np.ndarray) -> None:
    """Per-item histograms: ``items`` ``(B, P, C)`` C-contiguous uint8/uint16, ``out``
    ``(B, C, n_bins)`` C-contiguous int64 (added to)."""
    if items.ndim != 3 or out.ndim != 3 or out.shape[:2] != (items.shape[0], items.shape[2]):
        raise ValueError(f"items (B, P, C) and out (B, C, bins) differ: {items.shape} {out.shape}")
    if not items.size:
        return
    # checked once for the whole batch (the same checks as count_channels), then one kernel
    # call per item at its offset: per-item checks and lookups cost ~7% of a 256 x 256 tile
    if not items.flags.c_contiguous or not out.flags.c_contiguous:
        raise ValueError("items and out must be C-contiguous")
    count_channels(items[0].reshape(-1), items.shape[2], out[0])
    kernel = _kernel(items.dtype, out.dtype)
    b, p, c = items.shape
    for k in range(1, b):
        kernel(
            items.ctypes.data + k * items.strides[0], p, c, out.ctypes.data + k * out.strides[0],
            out.shape[2],
        )  # fmt: skip


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
