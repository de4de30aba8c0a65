"""Training throughput of each family as a fraction of this machine's physical limit.

For each family (supervised UNet, Pix2Pix, CycleGAN) at 128x128 and 256x256 with the classic
widths (64 base filters: unet_128 / unet_256, resnet_9blocks, 70x70 PatchGAN), channels_last
off and on, it builds the real task (the same code ``stainbench train`` runs), counts the
FLOPs of one training iteration with ``torch.utils.flop_counter.FlopCounterMode`` (forward,
backward; the optimizer's elementwise work is not counted), warms up, times iterations, and
divides the achieved FLOP rate by the fp32 matmul rate measured in the same run
(``torch.mm`` of 2048x2048 matrices, best of several). Inputs are random tensors in [-1, 1]:
this measures compute, not data loading.

    .venv/bin/python benchmarks/train_throughput.py --out docs/benchmarks/train.md
    .venv/bin/python benchmarks/train_throughput.py --families pix2pix --sizes 256 --iters 3

Results are provisional on a shared machine: the script records ``uptime`` before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from stainbench.data.transforms import Normalization
from stainbench.training.loop import build_task
from stainbench.training.recipe import recipe_from_dict
from stainbench.training.task import TaskContext


@dataclass
class Row:
    family: str
    size: int
    channels_last: bool
    upsample: str
    batch: int
    gflop_per_iter: float
    s_per_iter: float
    img_per_s: float
    gflops: float
    fraction_of_limit: float


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 ``torch.mm`` rate in GFLOP/s (2 n^3 FLOPs per product)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(3):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - t) / 3)
    return 2 * n**3 / best / 1e9


def recipe_for(family: str, size: int, channels_last: bool, upsample: str, batch: int) -> dict:
    if family == "cyclegan":
        gen = {"arch": "resnet", "kwargs": {"n_blocks": 9, "base_width": 64, "upsample": upsample}}
    else:
        depth = 8 if size >= 256 else 7  # unet_256 / unet_128
        kw = {"depth": depth, "base_width": 64, "upsample": upsample}
        if family == "pix2pix":
            kw["dropout"] = 0.5
        gen = {"arch": "unet", "kwargs": kw}
    recipe = {
        "family": family,
        "generator": gen,
        "data": {"patch_size": size},
        "train": {"channels_last": channels_last, "batch_size": batch, "steps": 10},
    }
    if family != "unet":
        recipe["discriminator"] = {"arch": "patchgan", "kwargs": {"base_width": 64, "n_layers": 3}}
    return recipe


def measure(
    family: str,
    size: int,
    channels_last: bool,
    upsample: str,
    batch: int,
    iters: int,
    limit: float,
) -> Row:
    recipe = recipe_from_dict(recipe_for(family, size, channels_last, upsample, batch))
    norm = Normalization("range", "B", (127.5,) * 3, (127.5,) * 3)
    ctx = TaskContext(3, 3, {"A": norm, "B": norm}, torch.device("cpu"))
    torch.manual_seed(0)
    task = build_task(recipe, ctx)
    gen = torch.Generator().manual_seed(0)
    batch_data = {k: torch.rand(batch, 3, size, size, generator=gen) * 2 - 1 for k in ("A", "B")}
    task.set_input(batch_data)
    with FlopCounterMode(display=False) as counter:
        task.optimize()
    flops = counter.get_total_flops()
    for _ in range(1):  # warm-up (the first iterations are 1.3-3x slower)
        task.set_input(batch_data)
        task.optimize()
    times = []
    for _ in range(iters):
        task.set_input(batch_data)
        t = time.perf_counter()
        task.optimize()
        times.append(time.perf_counter() - t)
    s = sorted(times)[len(times) // 2]  # median
    gflops = flops / s / 1e9
    return Row(
        family,
        size,
        channels_last,
        upsample,
        batch,
        flops / 1e9,
        s,
        batch / s,
        gflops,
        gflops / limit,
    )


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "n/a"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=["unet", "pix2pix", "cyclegan"])
    p.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    p.add_argument("--channels-last", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--upsample", nargs="+", default=["transpose"], choices=["transpose", "resize"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=3, help="timed iterations (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="Markdown file to write")
    p.add_argument("--json", type=Path, default=None, help="JSON file to write")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = _uptime()
    limit = matmul_gflops()
    print(f"fp32 matmul: {limit:.1f} GFLOP/s with {torch.get_num_threads()} threads")
    rows = []
    for family in args.families:
        for size in args.sizes:
            for up in args.upsample:
                for cl in args.channels_last:
                    row = measure(family, size, cl == "on", up, args.batch, args.iters, limit)
                    rows.append(row)
                    print(
                        f"{family:8s} {size:4d} cl={cl:3s} {up:9s} {row.img_per_s:7.3f} img/s "
                        f"{row.gflop_per_iter:8.1f} GFLOP/iter {row.gflops:6.1f} GFLOP/s "
                        f"{100 * row.fraction_of_limit:5.1f}% of limit",
                        flush=True,
                    )
    limit_after = matmul_gflops()
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "matmul_gflops": limit,
        "matmul_gflops_after": limit_after,
        "uptime_before": load_before,
        "uptime_after": _uptime(),
        "command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
    }
    if args.json:
        args.json.write_text(
            json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1)
        )
    if args.out:
        lines = [
            f"- date: {meta['date']}; torch {meta['torch']}, {meta['threads']} threads; "
            f"{meta['machine']}",
            f"- fp32 matmul limit: {limit:.1f} GFLOP/s (measured again at the end: "
            f"{limit_after:.1f})",
            f"- load: before `{load_before}`, after `{meta['uptime_after']}`",
            f"- command: `{meta['command']}`",
            "",
            "| family | size | channels_last | upsample | img/s | GFLOP/iter | GFLOP/s "
            "| % of limit |",
            "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            lines.append(
                f"| {r.family} | {r.size} | {'on' if r.channels_last else 'off'} | {r.upsample} "
                f"| {r.img_per_s:.3f} | {r.gflop_per_iter:.1f} | {r.gflops:.1f} | "
                f"{100 * r.fraction_of_limit:.0f}% |"
            )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
