"""Training throughput of each family as a fraction of this machine's physical limit.

For each family (supervised UNet, Pix2Pix, CycleGAN) at 128x128 and 256x256 with the classic
widths (64 base filters: unet_128 / unet_256, resnet_9blocks, 70x70 PatchGAN), channels_last
off and on, it builds the real task (the same code ``stainbench train`` runs), counts the
FLOPs of one training iteration with ``torch.utils.flop_counter.FlopCounterMode`` (forward,
backward; the optimizer's elementwise work is not counted), warms up, times iterations, and
divides the achieved FLOP rate by the fp32 matmul rate measured in the same run
(``torch.mm`` of 2048x2048 matrices). Inputs are random tensors in [-1, 1]: this measures
compute, not data loading.

Variants of the same iteration are built side by side and measured in alternating rounds: every
combination of ``--transpose-impl`` (how the generator's transposed convolutions are computed:
``native`` ``nn.ConvTranspose2d``, ``phase`` convolutions, ``auto``), and ``--conv-impl``
(``auto``: Winograd for the ResNet blocks' and the PatchGAN's stride-1 convolutions where
faster; ``native``: ``nn.Conv2d``). ``--malloc`` (``keep``: freed memory stays in the process,
as ``stainbench train`` runs on the CPU; ``system``: glibc's default) holds for the whole run:
compare it across runs. Each round times one iteration of every variant, each right after its
own matmul reference (the best of ``--matmul-reps`` products), so a change in the shared
machine's load hits all alike. The FLOPs per iteration are always counted on native convolutions
(the direct algorithm's count): Winograd does fewer multiplications for the same result, which
the "performed" column shows. A timing's fraction of the limit uses the matmul rate measured
next to it; the table reports medians over rounds and the per-round matmul rates.

    .venv/bin/python benchmarks/train_throughput.py --out docs/benchmarks/train.md
    .venv/bin/python benchmarks/train_throughput.py --families pix2pix --sizes 256 --iters 3
    .venv/bin/python benchmarks/train_throughput.py --sizes 256 --channels-last off \
        --transpose-impl native phase --iters 5
    .venv/bin/python benchmarks/train_throughput.py --sizes 256 --channels-last off \
        --conv-impl native auto --malloc system --iters 3

Results are provisional on a shared machine: the script records ``uptime`` before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from stainbench.bench.limits import fp32_matmul_gflops, machine_load
from stainbench.data.transforms import Normalization
from stainbench.training.allocator import keep_freed_memory
from stainbench.training.loop import build_task
from stainbench.training.recipe import recipe_from_dict
from stainbench.training.task import TaskContext


@dataclass
class Row:
    family: str
    size: int
    channels_last: bool
    upsample: str
    transpose_impl: str
    conv_impl: str
    keep_memory: bool
    batch: int
    gflop_per_iter: float  #: counted on the direct (native) convolutions: the limit's numerator
    gflop_performed: float  #: counted on what ran (fewer with Winograd)
    s_per_iter: float
    img_per_s: float
    gflops: float
    fraction_of_limit: float  #: median over rounds of (rate / that round's matmul rate)
    matmul_gflops: list[float]  #: the matmul reference measured next to each round's timing
    s_per_round: list[float]


@dataclass(frozen=True)
class Variant:
    """One way of computing the same iteration: implementations and the allocator setting."""

    transpose_impl: str = "auto"
    conv_impl: str = "auto"
    keep_memory: bool = True

    @property
    def label(self) -> str:
        alloc = "keep" if self.keep_memory else "system"
        return f"transpose={self.transpose_impl} conv={self.conv_impl} malloc={alloc}"


def recipe_for(
    family: str,
    size: int,
    channels_last: bool,
    upsample: str,
    batch: int,
    transpose_impl: str = "auto",
    conv_impl: str = "auto",
) -> dict:
    kw: dict = {"upsample": upsample, "transpose_impl": transpose_impl}
    if family == "cyclegan":
        kw["conv_impl"] = conv_impl
        gen = {"arch": "resnet", "kwargs": {"n_blocks": 9, "base_width": 64, **kw}}
    else:
        depth = 8 if size >= 256 else 7  # unet_256 / unet_128
        kw.update({"depth": depth, "base_width": 64})
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
        recipe["discriminator"] = {
            "arch": "patchgan",
            "kwargs": {"base_width": 64, "n_layers": 3, "conv_impl": conv_impl},
        }
    return recipe


def _count_gflop(task: object, batch_data: dict) -> float:
    task.set_input(batch_data)  # type: ignore[attr-defined]
    with FlopCounterMode(display=False) as counter:
        task.optimize()  # type: ignore[attr-defined]
    return counter.get_total_flops() / 1e9


def measure(
    family: str,
    size: int,
    channels_last: bool,
    upsample: str,
    batch: int,
    iters: int,
    variants: list[Variant],
    matmul_reps: int,
) -> list[Row]:
    """One row per variant, timed in alternating rounds (module docstring).

    The FLOPs per iteration (the limit's numerator) are counted on a twin task with native
    convolutions, so a variant that does less arithmetic (Winograd) is credited with the
    direct convolution's count, as the physical-limit rule defines it; what it performed is
    reported beside it.
    """
    norm = Normalization("range", "B", (127.5,) * 3, (127.5,) * 3)
    ctx = TaskContext(3, 3, {"A": norm, "B": norm}, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    batch_data = {k: torch.rand(batch, 3, size, size, generator=gen) * 2 - 1 for k in ("A", "B")}

    def task_for(transpose_impl: str, conv_impl: str) -> object:
        recipe = recipe_from_dict(
            recipe_for(family, size, channels_last, upsample, batch, transpose_impl, conv_impl)
        )
        torch.manual_seed(0)
        return build_task(recipe, ctx)

    tasks, performed, direct = {}, {}, {}
    for v in variants:
        if (v.transpose_impl, v.conv_impl) not in performed:
            task = task_for(v.transpose_impl, v.conv_impl)
            performed[v.transpose_impl, v.conv_impl] = _count_gflop(task, batch_data)
            task.set_input(batch_data)  # type: ignore[attr-defined]
            task.optimize()  # type: ignore[attr-defined]  (warm-up: the first are slower)
            tasks[v.transpose_impl, v.conv_impl] = task
        if v.transpose_impl not in direct:
            direct[v.transpose_impl] = _count_gflop(
                task_for(v.transpose_impl, "native"), batch_data
            )
    times: dict[Variant, list[float]] = {v: [] for v in variants}
    refs: dict[Variant, list[float]] = {v: [] for v in variants}
    for _ in range(iters):
        for v in variants:
            task = tasks[v.transpose_impl, v.conv_impl]
            refs[v].append(fp32_matmul_gflops(repeats=matmul_reps))
            task.set_input(batch_data)  # type: ignore[attr-defined]
            t = time.perf_counter()
            task.optimize()  # type: ignore[attr-defined]
            times[v].append(time.perf_counter() - t)
    rows = []
    for v in variants:
        s = statistics.median(times[v])
        gflop = direct[v.transpose_impl]
        frac = statistics.median(gflop / t / ref for t, ref in zip(times[v], refs[v], strict=True))
        rows.append(
            Row(
                family,
                size,
                channels_last,
                upsample,
                v.transpose_impl,
                v.conv_impl,
                v.keep_memory,
                batch,
                gflop,
                performed[v.transpose_impl, v.conv_impl],
                s,
                batch / s,
                gflop / s,
                frac,
                refs[v],
                times[v],
            )
        )
    return rows


def _label(row: Row) -> str:
    return Variant(row.transpose_impl, row.conv_impl, row.keep_memory).label


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=["unet", "pix2pix", "cyclegan"])
    p.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    p.add_argument("--channels-last", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--upsample", nargs="+", default=["transpose"], choices=["transpose", "resize"])
    p.add_argument(
        "--transpose-impl",
        nargs="+",
        default=["auto"],
        choices=["native", "phase", "auto"],
        help="how transposed convolutions are computed (same math; auto: the models' default); "
        "several alternate",
    )
    p.add_argument(
        "--conv-impl",
        nargs="+",
        default=["auto"],
        choices=["native", "auto"],
        help="how the ResNet blocks' and PatchGAN's stride-1 convolutions are computed (auto: "
        "Winograd where faster, the models' default; native: nn.Conv2d); several alternate",
    )
    p.add_argument(
        "--malloc",
        default="keep",
        choices=["keep", "system"],
        help="keep: freed memory stays in the process (what `stainbench train` does on the "
        "CPU); system: glibc's defaults. One per process: glibc's adaptive thresholds cannot "
        "be restored once set, so compare them in separate runs",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=3, help="timed rounds (median reported)")
    p.add_argument("--matmul-reps", type=int, default=5, help="matmul products per reference")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="Markdown file to write")
    p.add_argument("--json", type=Path, default=None, help="JSON file to write")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep = args.malloc == "keep" and keep_freed_memory()
    if args.malloc == "keep" and not keep:
        print("--malloc keep: not applied (not glibc, or MALLOC_*/GLIBC_TUNABLES set)")
    variants = [Variant(t, c, keep) for t in args.transpose_impl for c in args.conv_impl]
    _run(args, variants)


def _run(args: argparse.Namespace, variants: list[Variant]) -> None:
    load_before = machine_load()
    limit = fp32_matmul_gflops(repeats=10)
    print(f"fp32 matmul: {limit:.1f} GFLOP/s with {torch.get_num_threads()} threads")
    rows = []
    for family in args.families:
        for size in args.sizes:
            for up in args.upsample:
                for cl in args.channels_last:
                    for row in measure(
                        family,
                        size,
                        cl == "on",
                        up,
                        args.batch,
                        args.iters,
                        variants,
                        args.matmul_reps,
                    ):
                        rows.append(row)
                        refs = "/".join(f"{r:.0f}" for r in row.matmul_gflops)
                        print(
                            f"{family:8s} {size:4d} cl={cl:3s} {up:9s} {_label(row):40s} "
                            f"{row.img_per_s:7.3f} img/s {row.gflop_per_iter:8.1f} GFLOP/iter "
                            f"{row.gflops:6.1f} GFLOP/s {100 * row.fraction_of_limit:5.1f}% of "
                            f"limit (matmul per round {refs})",
                            flush=True,
                        )
    limit_after = fp32_matmul_gflops(repeats=10)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "matmul_gflops": limit,
        "matmul_gflops_after": limit_after,
        "uptime_before": load_before,
        "uptime_after": machine_load(),
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
            f"- fp32 matmul at the start: {limit:.1f} GFLOP/s, at the end: {limit_after:.1f}; "
            "each timing is divided by the matmul rate measured right before it (per round)",
            f"- load: before `{load_before}`, after `{meta['uptime_after']}`",
            f"- command: `{meta['command']}`",
            "- % of limit = (direct-convolution FLOPs / time) / matmul rate: an effective rate. "
            "Winograd variants do fewer multiplications for the same result (the performed "
            "column), so their rows can pass 100%",
            "",
            "| family | size | channels_last | upsample | variant | img/s | GFLOP/iter "
            "(direct) | GFLOP/iter performed | GFLOP/s | matmul GFLOP/s per round "
            "| % of limit |",
            "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: |",
        ]
        for r in rows:
            lines.append(
                f"| {r.family} | {r.size} | {'on' if r.channels_last else 'off'} | {r.upsample} "
                f"| {_label(r)} | {r.img_per_s:.3f} | {r.gflop_per_iter:.1f} "
                f"| {r.gflop_performed:.1f} "
                f"| {r.gflops:.1f} | {' / '.join(f'{m:.0f}' for m in r.matmul_gflops)} "
                f"| {100 * r.fraction_of_limit:.0f}% |"
            )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
