"""The physical reference of every speed figure: this machine's fp32 matmul rate.

Benchmarks express a model's speed as its FLOPs per second over the rate that ``torch.mm``
reaches on the same machine in the same run. On the 2-core development VM that rate is
bimodal (about 135 or about 180 GFLOP/s, changing within minutes), which is why the scripts
measure it right next to each timing instead of once.
"""

from __future__ import annotations

import subprocess
import time

import torch


def fp32_matmul_gflops(n: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """Best rate of ``repeats`` fp32 ``torch.mm`` products of ``n x n`` matrices, in GFLOP/s.

    One untimed product first (allocation, thread start-up); ``2 n^3`` FLOPs per product.
    ``threads``: set torch's intra-op threads first (None: leave them as they are).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def machine_load() -> str:
    """The machine's load when a benchmark runs: ``uptime``'s line, or ``"n/a"`` without it.

    Every benchmark records it before and after its timings: the development VM is shared,
    and a number measured under load is provisional.
    """
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "n/a"
