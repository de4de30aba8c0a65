"""Layer-level speed of the generators' upsampling: native transposed conv vs phase convs.

For every upsampling layer of unet_256 (kernel 4, stride 2, padding 1) and resnet_9blocks
(kernel 3, stride 2, padding 1, output padding 1) at a 256x256 tile, batch 1, this times one
forward + backward (input, weight and bias gradients) of ``nn.ConvTranspose2d`` and of
:class:`stainbench.models.phase_transpose.PhaseConvTranspose2d` holding the same weights.
Rounds alternate the two implementations next to a fresh fp32 matmul timing, so both see the
same machine load; the table reports medians over rounds, GFLOP/s (3x the forward FLOPs) and
each implementation's rate as a fraction of the same round's matmul rate.

    .venv/bin/python benchmarks/upsample_layers.py --rounds 5 --json /tmp/up.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from stainbench.models.phase_transpose import PhaseConvTranspose2d

#: (label, C_in, C_out, input side, kernel) at a 256x256 tile
LAYERS = [
    ("unet_256 up0", 512, 512, 1, 4),
    ("unet_256 up1", 1024, 512, 2, 4),
    ("unet_256 up2", 1024, 512, 4, 4),
    ("unet_256 up3", 1024, 512, 8, 4),
    ("unet_256 up4", 1024, 256, 16, 4),
    ("unet_256 up5", 512, 128, 32, 4),
    ("unet_256 up6", 256, 64, 64, 4),
    ("unet_256 up7", 128, 3, 128, 4),
    ("resnet_9blocks up0", 256, 128, 64, 3),
    ("resnet_9blocks up1", 128, 64, 128, 3),
]


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def matmul_rate(n: int = 2048, reps: int = 10) -> float:
    """fp32 ``torch.mm`` GFLOP/s: the best of ``reps`` products after one warm-up."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    load_before = _uptime()
    rows = []
    for label, cin, cout, side, k in LAYERS:
        kw = {"stride": 2, "padding": 1, "output_padding": 1 if k == 3 else 0}
        torch.manual_seed(0)
        impls = {"native": nn.ConvTranspose2d(cin, cout, k, **kw)}
        impls["phase"] = PhaseConvTranspose2d(cin, cout, k, **kw)
        impls["phase"].load_state_dict(impls["native"].state_dict())
        x = torch.randn(1, cin, side, side, requires_grad=True)
        grad = torch.randn(1, cout, 2 * side, 2 * side)
        flops = 3 * 2 * cin * cout * k * k * side * side
        n = max(3, min(20, int(4e9 / flops)))  # layer runs per timing

        def step(m: nn.Module, x: torch.Tensor = x, grad: torch.Tensor = grad) -> None:
            m(x).backward(grad)

        for m in impls.values():
            step(m)
        times: dict[str, list[float]] = {name: [] for name in impls}
        fracs: dict[str, list[float]] = {name: [] for name in impls}
        for _ in range(args.rounds):
            for name, m in impls.items():
                ref = matmul_rate()
                t0 = time.perf_counter()
                for _ in range(n):
                    step(m)
                t = (time.perf_counter() - t0) / n
                times[name].append(t)
                fracs[name].append(flops / t / 1e9 / ref)
        row = {"layer": label, "c_in": cin, "c_out": cout, "side": side, "kernel": k}
        for name in impls:
            t = statistics.median(times[name])
            row[f"{name}_ms"] = 1e3 * t
            row[f"{name}_gflops"] = flops / t / 1e9
            row[f"{name}_fraction"] = statistics.median(fracs[name])
        row["speedup"] = row["native_ms"] / row["phase_ms"]
        rows.append(row)
        print(
            f"{label:20s} {cin:5d}->{cout:4d} @{side:3d} k{k}: native {row['native_ms']:7.2f} ms "
            f"({100 * row['native_fraction']:3.0f}%)  phase {row['phase_ms']:7.2f} ms "
            f"({100 * row['phase_fraction']:3.0f}%)  speedup x{row['speedup']:.2f}",
            flush=True,
        )
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "uptime_before": load_before,
        "uptime_after": _uptime(),
        "command": "python benchmarks/upsample_layers.py " + " ".join(sys.argv[1:]),
    }
    print(f"load before: {meta['uptime_before']}\nload after:  {meta['uptime_after']}")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
