"""Keep freed memory in the process while training on the CPU (glibc's malloc).

glibc serves every allocation above its mmap threshold (128 KiB, rising to at most 32 MiB) with
a fresh ``mmap`` and returns it to the kernel on ``free``. A training iteration allocates the
same large buffers every time (activations, weight gradients of 4-33 MB for unet_256's inner
levels), so every iteration page-faults them in again: ~3.6 us per 4 KiB page on this
project's VM, which is 2-29 ms for one 33 MB gradient. With mmap off and a high trim threshold
freed blocks stay in the heap and the next iteration reuses them. Measured in one sitting
(``docs/benchmarks/train.md``): unet_256 at 256x256 18% faster per iteration, Pix2Pix 6%,
CycleGAN 2%.

The cost: the process keeps its peak heap for its lifetime (training reaches its peak in the
first iteration anyway). :func:`reuse_freed_memory` restores glibc's defaults when it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
from collections.abc import Iterator

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_KEEP_TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes (an int)


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


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """While inside, freed memory stays in the process for reuse (module docstring).

    Yields whether the setting took effect (``False`` off glibc or when ``enabled`` is false;
    then nothing changes). Process-wide: meant for a training run, not for library code that
    runs beside other work.
    """
    libc = _glibc() if enabled else None
    applied = bool(
        libc is not None
        and libc.mallopt(_M_MMAP_MAX, 0) == 1
        and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_TRIM_THRESHOLD) == 1
    )
    try:
        yield applied
    finally:
        if libc is not None and applied:
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
