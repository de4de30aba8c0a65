"""Keep freed memory in the process for a training run (glibc's malloc).

glibc serves allocations above its mmap threshold (128 KiB, rising with use to at most 32 MiB)
with a fresh ``mmap`` and returns them to the kernel on ``free``; it also trims the heap's free
top. A training iteration allocates the same large buffers every time (activations, weight
gradients of 4-33 MB for unet_256's inner levels), so it page-faults them in again every
iteration: ~3.6 us per 4 KiB page on this project's VM, 2-29 ms for one 33 MB gradient. With
mmap off and trimming off, freed blocks stay in the heap and the next iteration reuses them:
unet_256 trains 12-20% faster at 256x256 on this CPU (``docs/benchmarks/train.md``).

It is a process-wide, one-way switch: glibc turns its self-adjusting thresholds off for good
once ``mallopt`` sets them, and the process keeps its peak heap until it exits. So the
``stainbench train`` command sets it once, before training (not :func:`~stainbench.training.
loop.fit`, which runs inside other programs and test suites), and leaves alone a process
whose ``MALLOC_*`` or ``GLIBC_TUNABLES`` malloc settings someone chose.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes (an int)
_USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Stop glibc from unmapping and trimming freed memory, for the rest of the process.

    Returns whether the setting took effect: ``False`` off glibc, or when the environment
    already chooses malloc settings (``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``,
    ``MALLOC_MMAP_THRESHOLD_``, or ``glibc.malloc`` tunables), which are then left as they are.
    """
    if any(k in os.environ for k in _USER_SETTINGS):
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(
        libc.mallopt(_M_MMAP_MAX, 0) == 1
        and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_TRIM_THRESHOLD) == 1
    )
