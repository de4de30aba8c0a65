"""Latency of exported tile models in-process: PyTorch eager vs ONNX Runtime.

For each family's generator at its full size (unet_256 for unet and pix2pix, resnet_9blocks
for cyclegan) this measures, at batch 1 and 8 on 256x256 tiles:

- PyTorch eager running the uint8-in/uint8-out tile model (normalization inside);
- ONNX Runtime running the exported uint8 graph (what Triton serves);
- ONNX Runtime running the bare float generator graph (float32 NCHW in/out), to show what the
  in-graph normalization and conversions cost;

each as milliseconds per batch, tiles per second and a fraction of the physical limit:
(model FLOPs per tile, from torch.utils.flop_counter) x tiles/s / (fp32 matmul FLOP/s of this
CPU measured in the same run with the same thread count).

Usage::

    .venv/bin/python benchmarks/export_latency.py --out docs/benchmarks/export.md

The machine may be shared: the load average is recorded before and after, and numbers taken
under load are provisional. Weights are random (latency does not depend on them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

from stainbench.data.transforms import Normalization
from stainbench.export.onnx import export_onnx, make_translator
from stainbench.models import create_model

#: family -> (architecture, kwargs, label) at the sizes the families train with.
FAMILIES = {
    "unet": ("unet", {"depth": 8, "base_width": 64}, "unet_256"),
    "pix2pix": ("unet", {"depth": 8, "base_width": 64}, "unet_256"),
    "cyclegan": ("resnet", {"n_blocks": 9, "base_width": 64}, "resnet_9blocks"),
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_flops(threads: int, n: int = 2048, repeats: int = 10) -> float:
    """fp32 matmul FLOP/s of torch with ``threads`` threads (median of ``repeats``)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = median_seconds(lambda: torch.mm(a, b), repeats, warmup=3)
    return 2 * n**3 / t


def flops_per_tile(model: torch.nn.Module, tile: int) -> float:
    x = torch.zeros(1, 3, tile, tile)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def bench_family(
    family: str, tile: int, batches: list[int], threads: int, repeats: int, limit: float, tmp: Path
) -> list[dict]:
    arch, kwargs, label = FAMILIES[family]
    torch.manual_seed(0)
    gen = create_model(arch, **kwargs).eval()
    norm = {
        "A": Normalization("range", "A", (127.5,) * 3, (127.5,) * 3).to_dict(),
        "B": Normalization("zscore", "B", (170.0, 120.0, 160.0), (45.0, 60.0, 40.0)).to_dict(),
    }
    tr = make_translator(gen, norm, gen.size_multiple)
    flops = flops_per_tile(gen, tile)
    out = tmp / family
    files = export_onnx(tr, out, sample_tile=tile)
    float_path = out / "generator_float.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            gen,
            (torch.zeros(1, 3, tile, tile),),
            str(float_path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
        )
    ident = export_onnx(make_translator(torch.nn.Identity(), norm, 1), tmp / f"{family}_id")
    s_u8 = session(files.model, threads)
    s_f = session(float_path, threads)
    s_id = session(ident.model, threads)
    torch.set_num_threads(threads)
    a, bm = torch.randn(2048, 2048), torch.randn(2048, 2048)
    rows = []
    rng = np.random.default_rng(0)
    for b in batches:
        x8 = rng.integers(0, 256, (b, tile, tile, 3), dtype=np.uint8)
        xf = rng.standard_normal((b, 3, tile, tile)).astype(np.float32)
        xt = torch.from_numpy(x8)

        def eager(xt: torch.Tensor = xt) -> object:
            with torch.no_grad():
                return tr(xt)[0]

        cases: dict[str, Callable[[], object]] = {
            "PyTorch eager (uint8 tile model)": eager,
            "ONNX Runtime (uint8 graph, served)": lambda x8=x8: s_u8.run(["OUTPUT"], {"INPUT": x8}),
            "ONNX Runtime (float generator only)": lambda xf=xf: s_f.run(None, {"x": xf}),
            "ONNX Runtime (normalization + uint8 only)": lambda x8=x8: s_id.run(
                ["OUTPUT"], {"INPUT": x8}
            ),
        }
        # Rounds interleave every case with a matmul timing, so that a change in the shared
        # machine's load hits all of them alike; each fraction uses the same round's matmul.
        times: dict[str, list[float]] = {k: [] for k in cases}
        fracs: dict[str, list[float]] = {k: [] for k in cases}
        for fn in cases.values():
            fn()  # warm-up
        for _ in range(repeats):
            for name, fn in cases.items():
                t_mm = median_seconds(lambda: torch.mm(a, bm), 3, warmup=1)
                t = median_seconds(fn, 1, warmup=0)
                times[name].append(t)
                work = 0.0 if "normalization" in name else flops
                fracs[name].append(work * b / t / (2 * 2048**3 / t_mm))
        for name in cases:
            t = statistics.median(times[name])
            frac = statistics.median(fracs[name])
            rows.append(
                {
                    "family": family,
                    "generator": label,
                    "runtime": name,
                    "batch": b,
                    "ms_per_batch": 1e3 * t,
                    "tiles_per_s": b / t,
                    "gflop_per_tile": 0.0 if "normalization" in name else flops / 1e9,
                    "fraction_of_limit": frac,
                    "spread": (max(times[name]) - min(times[name])) / t,
                }
            )
            print(
                f"{family:9s} {name:38s} b={b}: {1e3 * t:8.1f} ms  {100 * frac:5.1f}% of limit",
                flush=True,
            )
    return rows


def render(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Export latency: PyTorch eager vs ONNX Runtime (in-process)",
        "",
        f"**Provisional**: measured on a shared machine ({meta['load_before']} before, "
        f"{meta['load_after']} after). Compare ratios within this run only.",
        "",
        f"- Date: {meta['date']}; machine: {meta['cpu']}, {meta['cores']} cores; "
        f"threads: {meta['threads']}",
        f"- Command: `{meta['command']}`",
        f"- Versions: torch {meta['torch']}, onnxruntime {meta['onnxruntime']}",
        f"- Physical limit: fp32 matmul {meta['matmul_gflops']:.1f} GFLOP/s (torch, "
        f"{meta['threads']} threads, 2048x2048, measured in this run); fraction of limit = "
        "model FLOPs per tile x tiles/s / that rate.",
        f"- Tiles {meta['tile']}x{meta['tile']}, random weights; {meta['repeats']} rounds after "
        "a warm-up run, each round timing every runtime once next to a fresh matmul timing; "
        "medians over rounds (the fraction uses the matmul rate of its own round).",
        "",
        "| family | generator | GFLOP/tile | runtime | batch | ms/batch | tiles/s | % of limit |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        gflop = f"{r['gflop_per_tile']:.1f}" if r["gflop_per_tile"] else "-"
        frac = f"{100 * r['fraction_of_limit']:.0f}%" if r["gflop_per_tile"] else "-"
        lines.append(
            f"| {r['family']} | {r['generator']} | {gflop} | {r['runtime']} | {r['batch']} "
            f"| {r['ms_per_batch']:.1f} | {r['tiles_per_s']:.2f} | {frac} |"
        )
    lines += [
        "",
        "Target: the served uint8 graph of every family >= 85% of the limit at batch 8.",
        "",
    ]
    top = max(meta["batches"])
    for fam in dict.fromkeys(r["family"] for r in rows):

        def pick(key: str, fam: str = fam) -> dict | None:
            found = [r for r in rows if r["family"] == fam and key in r["runtime"]]
            return next((r for r in found if r["batch"] == top), None)

        served, flt, norm = pick("uint8 graph"), pick("float generator"), pick("normalization")
        if served and flt and norm:
            frac = served["fraction_of_limit"]
            verdict = "meets" if frac >= 0.85 else "misses"
            bare = 100 * flt["fraction_of_limit"]
            share = 100 * norm["ms_per_batch"] / flt["ms_per_batch"]
            lines.append(
                f"- {fam}: served uint8 graph at batch {top} = {100 * frac:.0f}% of the limit "
                f"({verdict} the 85% target; bare float generator {bare:.0f}%). The in-graph "
                f"normalization and uint8 conversions alone take {norm['ms_per_batch']:.1f} ms "
                f"= {share:.1f}% of the generator's time."
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--families",
        nargs="+",
        default=["unet", "cyclegan"],
        choices=sorted(FAMILIES),
        help="families to measure (pix2pix uses the same unet_256 as unet)",
    )
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=5, help="measurement rounds")
    ap.add_argument("--out", type=Path, default=None, help="Markdown report to write")
    ap.add_argument("--json", type=Path, default=None, help="raw rows as JSON")
    args = ap.parse_args()
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "tile": args.tile,
        "batches": args.batches,
        "repeats": args.repeats,
        "load_before": load(),
        "command": "python benchmarks/export_latency.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if v is not None and k not in ("out", "json")
        ),
    }
    limit = matmul_flops(args.threads)
    meta["matmul_gflops"] = limit / 1e9
    print(f"fp32 matmul: {limit / 1e9:.1f} GFLOP/s ({args.threads} threads)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam in args.families:
            rows += bench_family(
                fam, args.tile, args.batches, args.threads, args.repeats, limit, Path(tmp)
            )
    limit_after = matmul_flops(args.threads)
    meta["matmul_gflops_after"] = limit_after / 1e9
    meta["load_after"] = load()
    if args.json:  # raw rows first: a rendering problem must not lose a long run
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    text = render(rows, meta)
    text += (
        f"\nfp32 matmul re-measured after the run: {limit_after / 1e9:.1f} GFLOP/s "
        "(a large change means the machine's load changed during the run).\n"
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
