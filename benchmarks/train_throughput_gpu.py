"""Training throughput of each family on a CUDA GPU, as a fraction of the card's matmul rate.

The GPU twin of ``train_throughput.py`` (issue 4: "if your task is lent a GPU, measure the
same training throughput per family at 256x256 on the GPU; record the card"). Same tasks
(the code ``stainbench train`` runs), same classic widths (unet_256, resnet_9blocks, 70x70
PatchGAN), same FLOP count (``FlopCounterMode`` over one training iteration), but:

- three precisions, each judged against the matmul rate of the same precision measured in the
  same run (``torch.mm`` of 8192x8192 matrices):
  ``fp32`` (TF32 off for matmuls and cuDNN convolutions: true fp32),
  ``tf32`` (TF32 on for both; PyTorch's default for convolutions),
  ``bf16`` (``train.bf16: true``: autocast to bfloat16, TF32 on);
- batch 1 (the classic recipes) and a larger batch that fills the GPU;
- ``torch.backends.cudnn.benchmark = True`` (fixed shapes) and timing with the device
  synchronised (each ``optimize()`` returns Python floats, which synchronises; the clock is
  read after ``torch.cuda.synchronize()``).

    python benchmarks/train_throughput_gpu.py --out OUT.md --json OUT.json
    python benchmarks/train_throughput_gpu.py --device cpu --sizes 128 --families unet \
        --precisions fp32 --batches 1 --iters 1 --warmup 1 --matmul-n 1024 \
        --channels-last off                          # a smoke run without a GPU (~10 s)

Sizes below 128 are refused (unet_128 halves a tile 7 times). Run on the device machine by
``benchmarks/gpu_session.sh`` or ``benchmarks/gpu_checks.sh``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import recipe_for

from stainbench.data.transforms import Normalization
from stainbench.training.loop import build_task
from stainbench.training.recipe import recipe_from_dict
from stainbench.training.task import TaskContext

PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass
class Row:
    family: str
    size: int
    precision: str
    channels_last: bool
    batch: int
    gflop_per_iter: float
    s_per_iter: float
    img_per_s: float
    tflops: float
    matmul_tflops: float
    fraction_of_limit: float
    peak_mem_gib: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_precision(precision: str) -> None:
    """TF32 switches for ``fp32`` (off) and ``tf32``/``bf16`` (on)."""
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def matmul_tflops(device: torch.device, precision: str, n: int = 8192, repeats: int = 5) -> float:
    """Best ``torch.mm`` rate in TFLOP/s for ``precision`` (2 n^3 FLOPs per product)."""
    set_precision(precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - t) / 5)
    del a, b
    return 2 * n**3 / best / 1e12


def measure(
    family: str,
    size: int,
    precision: str,
    channels_last: bool,
    batch: int,
    iters: int,
    warmup: int,
    limit_tflops: float,
    device: torch.device,
) -> Row:
    set_precision(precision)
    raw = recipe_for(family, size, channels_last, "transpose", batch)
    raw["train"]["bf16"] = precision == "bf16"
    raw["train"]["device"] = device.type
    recipe = recipe_from_dict(raw)
    norm = Normalization("range", "B", (127.5,) * 3, (127.5,) * 3)
    ctx = TaskContext(3, 3, {"A": norm, "B": norm}, device)
    torch.manual_seed(0)
    task = build_task(recipe, ctx)
    gen = torch.Generator().manual_seed(0)
    data = {k: torch.rand(batch, 3, size, size, generator=gen) * 2 - 1 for k in ("A", "B")}
    task.set_input(data)
    with FlopCounterMode(display=False) as counter:
        task.optimize()
    flops = counter.get_total_flops()
    for _ in range(warmup):  # cuDNN autotuning happens in the first iterations
        task.set_input(data)
        task.optimize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        task.set_input(data)
        task.optimize()
    _sync(device)
    s = (time.perf_counter() - t) / iters
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    del task
    if device.type == "cuda":
        torch.cuda.empty_cache()
    tflops = flops / s / 1e12
    return Row(
        family,
        size,
        precision,
        channels_last,
        batch,
        flops / 1e9,
        s,
        batch / s,
        tflops,
        limit_tflops,
        tflops / limit_tflops,
        peak,
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs"
    return f"{platform.processor() or platform.machine()} (CPU smoke run)"


def markdown(meta: dict, rows: list[Row]) -> str:
    lines = [
        f"- date: {meta['date']}; device: **{meta['device']}**; torch {meta['torch']}, "
        f"CUDA {meta['cuda']}, cuDNN {meta['cudnn']}",
        "- matmul limit (torch.mm 8192^3, best of 5x5), TFLOP/s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in meta["matmul_tflops"].items()),
        f"- command: `{meta['command']}`",
        "",
        "| family | size | precision | channels_last | batch | img/s | GFLOP/iter | TFLOP/s "
        "| % of same-precision matmul | peak GiB |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.family} | {r.size} | {r.precision} | {'on' if r.channels_last else 'off'} "
            f"| {r.batch} | {r.img_per_s:.1f} | {r.gflop_per_iter:.0f} | {r.tflops:.1f} "
            f"| {100 * r.fraction_of_limit:.1f}% | {r.peak_mem_gib:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke run")
    p.add_argument("--families", nargs="+", default=["unet", "pix2pix", "cyclegan"])
    p.add_argument("--sizes", nargs="+", type=int, default=[256])
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--channels-last", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--iters", type=int, default=8, help="timed iterations (mean reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--matmul-n", type=int, default=8192)
    p.add_argument("--out", type=Path, default=None, help="Markdown file to write")
    p.add_argument("--json", type=Path, default=None, help="JSON file to write")
    args = p.parse_args()
    if min(args.sizes) < 128:
        p.error("--sizes: 128 or more (unet_128 halves a tile 7 times; 256 and up: unet_256)")
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU visible: run with --device cpu for a smoke run")
        torch.backends.cudnn.benchmark = True
    limits = {pr: matmul_tflops(device, pr, args.matmul_n) for pr in args.precisions}
    print("matmul TFLOP/s:", {k: round(v, 1) for k, v in limits.items()}, flush=True)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "matmul_tflops": limits,
        "command": "python benchmarks/train_throughput_gpu.py " + " ".join(sys.argv[1:]),
    }
    rows: list[Row] = []

    def write() -> None:  # after every row: a run cut short still leaves its numbers
        if args.json:
            args.json.write_text(
                json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1)
            )
        if args.out:
            args.out.write_text(markdown(meta, rows))

    for family in args.families:
        for size in args.sizes:
            for precision in args.precisions:
                for batch in args.batches:
                    for cl in args.channels_last:
                        try:
                            row = measure(
                                family, size, precision, cl == "on", batch, args.iters,
                                args.warmup, limits[precision], device,
                            )  # fmt: skip
                        except torch.OutOfMemoryError as exc:
                            print(f"{family} {size} {precision} b{batch} cl={cl}: OOM {exc}")
                            torch.cuda.empty_cache()
                            continue
                        rows.append(row)
                        write()
                        print(
                            f"{family:8s} {size:4d} {precision} b{batch:<3d} cl={cl:3s} "
                            f"{row.img_per_s:8.1f} img/s {row.tflops:6.1f} TFLOP/s "
                            f"{100 * row.fraction_of_limit:5.1f}% of {precision} matmul "
                            f"peak {row.peak_mem_gib:.1f} GiB",
                            flush=True,
                        )
    meta["matmul_tflops_after"] = {
        pr: matmul_tflops(device, pr, args.matmul_n) for pr in args.precisions
    }
    write()


if __name__ == "__main__":
    main()
