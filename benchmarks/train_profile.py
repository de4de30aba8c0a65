"""Where one training iteration's time goes: a ``torch.profiler`` breakdown by op and shape.

Builds the same task as ``benchmarks/train_throughput.py`` (classic widths, random inputs in
[-1, 1], ``stainbench train``'s malloc setting), warms up, times ``--iters`` iterations, then
profiles ``--profile-iters`` more and prints (and optionally writes as Markdown):

- the iteration time, its direct-convolution FLOPs, and its rate as a fraction of the fp32
  matmul rate measured in the same run (the limit of ``docs/benchmarks/train.md``);
- the ops with the most self time per iteration (convolutions, matrix products, Adam, ...);
- the convolution and matrix-product calls per input shape (one row per layer and pass),
  which names the layers that run below the matmul rate.

    .venv/bin/python benchmarks/train_profile.py --family unet --size 256 --batch 1
    .venv/bin/python benchmarks/train_profile.py --family pix2pix --batch 4 --out /tmp/p.md

Results are provisional on a shared machine: the script records ``uptime`` before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import recipe_for

from stainbench.bench.limits import fp32_matmul_gflops, machine_load
from stainbench.data.transforms import Normalization
from stainbench.training.allocator import keep_freed_memory
from stainbench.training.loop import build_task
from stainbench.training.recipe import recipe_from_dict
from stainbench.training.task import TaskContext

LAYER_OPS = ("aten::convolution", "aten::convolution_backward", "aten::mm", "aten::bmm")


def _task(family: str, size: int, batch: int, conv_impl: str) -> object:
    norm = Normalization("range", "B", (127.5,) * 3, (127.5,) * 3)
    ctx = TaskContext(3, 3, {"A": norm, "B": norm}, torch.device("cpu"))
    raw = recipe_for(family, size, False, "transpose", batch, conv_impl=conv_impl)
    torch.manual_seed(0)
    return build_task(recipe_from_dict(raw), ctx)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="unet", choices=["unet", "pix2pix", "cyclegan"])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=3, help="timed iterations (median reported)")
    p.add_argument("--profile-iters", type=int, default=2, help="profiled iterations")
    p.add_argument("--top", type=int, default=12, help="ops listed by self time")
    p.add_argument("--min-ms", type=float, default=1.0, help="shortest layer row listed (ms)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="Markdown file to write")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    load_before = machine_load()
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, args.size, args.size)
    data = {k: torch.rand(shape, generator=gen) * 2 - 1 for k in ("A", "B")}
    direct = _task(args.family, args.size, args.batch, "native")
    direct.set_input(data)  # type: ignore[attr-defined]
    with FlopCounterMode(display=False) as counter:
        direct.optimize()  # type: ignore[attr-defined]
    gflop = counter.get_total_flops() / 1e9
    del direct
    task = _task(args.family, args.size, args.batch, "auto")

    def step() -> None:
        task.set_input(data)  # type: ignore[attr-defined]
        task.optimize()  # type: ignore[attr-defined]

    for _ in range(2):
        step()
    times, refs = [], []
    for _ in range(args.iters):
        refs.append(fp32_matmul_gflops())
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.profile_iters):
            step()
    n = args.profile_iters
    sec = statistics.median(times)
    ref = statistics.median(refs)
    lines = [
        f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads",
        f"- command: `python benchmarks/train_profile.py {' '.join(sys.argv[1:])}`",
        f"- load: before `{load_before}`, after `{machine_load()}`",
        f"- {args.family} at {args.size}x{args.size}, batch {args.batch}: {1000 * sec:.0f} ms "
        f"per iteration (median of {args.iters}), {gflop:.1f} GFLOP (direct), matmul "
        f"{ref:.0f} GFLOP/s: {100 * gflop / sec / ref:.0f}% of the limit; the FLOPs alone at "
        f"the matmul rate would take {1000 * gflop / ref:.0f} ms",
        "",
        "| op (self time) | ms per iteration | calls |",
        "| --- | ---: | ---: |",
    ]
    by_op = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    for e in by_op[: args.top]:
        lines.append(f"| `{e.key}` | {e.self_cpu_time_total / n / 1000:.1f} | {e.count // n} |")
    lines += ["", "| layer op | input shapes | ms per iteration |", "| --- | --- | ---: |"]
    by_shape = prof.key_averages(group_by_input_shape=True)
    layer_rows = [e for e in by_shape if e.key in LAYER_OPS]
    for e in sorted(layer_rows, key=lambda e: -e.cpu_time_total):
        ms = e.cpu_time_total / n / 1000
        if ms >= args.min_ms:
            shapes = ", ".join(str(s) for s in e.input_shapes if s)
            lines.append(f"| `{e.key}` | {shapes} | {ms:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
