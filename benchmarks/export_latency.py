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

``--transpose-impl native phase`` builds each generator twice with the same weights, once per
way of computing its transposed convolutions (``nn.ConvTranspose2d``, or one regular
convolution per output phase: the same math, exported as Conv nodes), and measures both in the
same rounds. Every timing sits next to its own matmul reference (best of ``--matmul-reps``
products); the per-round matmul rates are reported with the rows.

``--instances 1 2`` also measures the served uint8 graph as a throughput configuration: N
ONNX Runtime sessions with ``threads / N`` intra-op threads each, every one running its own
batch at the same time (what Triton does with ``instance_count: N`` and
``intra_op_threads: 0``, i.e. cores / instances, as in ``export/cpu-throughput.yaml``). Its
rows report the wall time of the N concurrent batches and tiles/s = N x batch / that time.

Usage::

    .venv/bin/python benchmarks/export_latency.py --out docs/benchmarks/export.md
    .venv/bin/python benchmarks/export_latency.py --families unet --batches 8 \
        --transpose-impl native phase --repeats 5

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
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

from stainbench.bench.limits import machine_load
from stainbench.data.transforms import Normalization
from stainbench.export.onnx import export_float_graph, export_onnx, make_translator
from stainbench.models import create_model
from stainbench.models.thin_conv import ThinConv2d

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
    family: str,
    tile: int,
    batches: list[int],
    threads: int,
    repeats: int,
    tmp: Path,
    impls: list[str],
    matmul_reps: int,
    heads: list[str] | None = None,
    instances: list[int] | None = None,
) -> list[dict]:
    arch, kwargs, label = FAMILIES[family]
    norm = {
        "A": Normalization("range", "A", (127.5,) * 3, (127.5,) * 3).to_dict(),
        "B": Normalization("zscore", "B", (170.0, 120.0, 160.0), (45.0, 60.0, 40.0)).to_dict(),
    }
    models = {}  # impl -> (tile model, served session, float session)
    parallel: dict[tuple[str, int], list[ort.InferenceSession]] = {}
    pool = ThreadPoolExecutor(max(instances or [1]))
    flops = 0.0
    heads = heads or ["rows"]
    for impl, head in [(i, h) for i in impls for h in heads]:
        torch.manual_seed(0)  # the same weights for every implementation
        gen = create_model(arch, transpose_impl=impl, **kwargs).eval()
        thin = [m for m in gen.modules() if isinstance(m, ThinConv2d)]
        if thin and len(heads) > 1:  # the model has a thin head: label the variant
            impl = f"{impl}, head {head}"
        for m in thin:
            m.impl = "native" if head == "native" else m.impl
        tr = make_translator(gen, norm, gen.size_multiple)
        flops = flops_per_tile(gen, tile)  # the same math: the same count
        out = tmp / f"{family}_{impl}".replace(", ", "_").replace(" ", "_")
        files = export_onnx(tr, out, sample_tile=tile)
        float_path = export_float_graph(
            gen, torch.zeros(1, 3, tile, tile), out / "generator_float.onnx"
        )
        models[impl] = (tr, session(files.model, threads), session(float_path, threads))
        for n in instances or [1]:
            if n > 1:  # n concurrent sessions sharing the cores: the throughput configuration
                parallel[impl, n] = [session(files.model, max(1, threads // n)) for _ in range(n)]
    ident = export_onnx(make_translator(torch.nn.Identity(), norm, 1), tmp / f"{family}_id")
    s_id = session(ident.model, threads)
    torch.set_num_threads(threads)
    a, bm = torch.randn(2048, 2048), torch.randn(2048, 2048)
    rows = []
    rng = np.random.default_rng(0)
    for b in batches:
        x8 = rng.integers(0, 256, (b, tile, tile, 3), dtype=np.uint8)
        xf = rng.standard_normal((b, 3, tile, tile)).astype(np.float32)
        xt = torch.from_numpy(x8)
        cases: dict[tuple[str, str], Callable[[], object]] = {}
        batches: dict[tuple[str, str], int] = {}  # batches one call of a case runs (instances)
        for impl, (tr, s_u8, s_f) in models.items():

            def eager(xt: torch.Tensor = xt, tr: torch.nn.Module = tr) -> object:
                with torch.no_grad():
                    return tr(xt)[0]

            cases[("PyTorch eager (uint8 tile model)", impl)] = eager
            cases[("ONNX Runtime (uint8 graph, served)", impl)] = lambda x8=x8, s=s_u8: s.run(
                ["OUTPUT"], {"INPUT": x8}
            )
            cases[("ONNX Runtime (float generator only)", impl)] = lambda xf=xf, s=s_f: s.run(
                None, {"x": xf}
            )
            for (p_impl, n), sessions in parallel.items():
                if p_impl != impl:
                    continue

                def concurrent(x8: np.ndarray = x8, sessions: list = sessions) -> object:
                    jobs = [pool.submit(s.run, ["OUTPUT"], {"INPUT": x8}) for s in sessions]
                    return [j.result() for j in jobs]

                name = f"ONNX Runtime (uint8 graph, served, {n} instances x {threads // n} thread)"
                cases[(name, impl)] = concurrent
                batches[(name, impl)] = n
        cases[("ONNX Runtime (normalization + uint8 only)", "-")] = lambda x8=x8: s_id.run(
            ["OUTPUT"], {"INPUT": x8}
        )
        # Rounds interleave every case with a matmul timing, so that a change in the shared
        # machine's load hits all of them alike; each fraction uses the same round's matmul.
        times: dict[tuple[str, str], list[float]] = {k: [] for k in cases}
        fracs: dict[tuple[str, str], list[float]] = {k: [] for k in cases}
        refs: dict[tuple[str, str], list[float]] = {k: [] for k in cases}
        for fn in cases.values():
            fn()  # warm-up
        for _ in range(repeats):
            for key, fn in cases.items():
                torch.mm(a, bm)
                t_mm = min(
                    median_seconds(lambda: torch.mm(a, bm), 1, 0) for _ in range(matmul_reps)
                )
                rate = 2 * 2048**3 / t_mm
                t = median_seconds(fn, 1, warmup=0)
                times[key].append(t)
                refs[key].append(rate / 1e9)
                work = 0.0 if "normalization" in key[0] else flops
                fracs[key].append(work * b * batches.get(key, 1) / t / rate)
        for key in cases:
            name, impl = key
            t = statistics.median(times[key])
            frac = statistics.median(fracs[key])
            rows.append(
                {
                    "family": family,
                    "generator": label,
                    "runtime": name,
                    "transpose_impl": impl,
                    "batch": b,
                    "ms_per_batch": 1e3 * t,
                    "tiles_per_s": b * batches.get(key, 1) / t,
                    "instances": batches.get(key, 1),
                    "gflop_per_tile": 0.0 if "normalization" in name else flops / 1e9,
                    "fraction_of_limit": frac,
                    "spread": (max(times[key]) - min(times[key])) / t,
                    "matmul_gflops_per_round": refs[key],
                }
            )
            print(
                f"{family:9s} {name:41s} {impl:6s} b={b}: {1e3 * t:8.1f} ms  "
                f"{100 * frac:5.1f}% of limit (matmul per round "
                f"{'/'.join(f'{r:.0f}' for r in refs[key])})",
                flush=True,
            )
    pool.shutdown()
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
        f"- Physical limit: fp32 matmul (torch, {meta['threads']} threads, 2048x2048, best of "
        f"{meta['matmul_reps']} products) measured right before every timing; "
        f"{meta['matmul_gflops']:.1f} GFLOP/s at the start of the run. Fraction of limit = "
        "model FLOPs per tile x tiles/s / the matmul rate of the same round.",
        f"- Tiles {meta['tile']}x{meta['tile']}, random weights; {meta['repeats']} rounds after "
        "a warm-up run, each round timing every runtime once next to a fresh matmul timing; "
        "medians over rounds. Transpose impl: how the generator's transposed convolutions are "
        "computed (`native` ConvTranspose, `phase` one Conv per output phase; the same math); "
        "`head rows`/`head native`, where shown: the ResNet generator's 7x7 RGB head as row "
        "convolutions + a column sum (the default) or as one convolution (the same math).",
        "",
        "| family | generator | GFLOP/tile | runtime | transpose impl | batch | ms/batch "
        "| tiles/s | matmul GFLOP/s per round | % of limit |",
        "| --- | --- | ---: | --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        gflop = f"{r['gflop_per_tile']:.1f}" if r["gflop_per_tile"] else "-"
        frac = f"{100 * r['fraction_of_limit']:.0f}%" if r["gflop_per_tile"] else "-"
        refs = " / ".join(f"{m:.0f}" for m in r["matmul_gflops_per_round"])
        lines.append(
            f"| {r['family']} | {r['generator']} | {gflop} | {r['runtime']} "
            f"| {r['transpose_impl']} | {r['batch']} | {r['ms_per_batch']:.1f} "
            f"| {r['tiles_per_s']:.2f} | {refs} | {frac} |"
        )
    lines += [
        "",
        "Target: the served uint8 graph of every family >= 85% of the limit at batch 8.",
        "",
    ]
    top = max(meta["batches"])
    for fam, impl in dict.fromkeys(
        (r["family"], r["transpose_impl"]) for r in rows if r["transpose_impl"] != "-"
    ):

        def pick(key: str, fam: str = fam, impl: str = impl) -> dict | None:
            found = [
                r
                for r in rows
                if r["family"] == fam
                and key in r["runtime"]
                and r["transpose_impl"] in (impl, "-")
                and r["instances"] == 1
            ]
            return next((r for r in found if r["batch"] == top), None)

        served, flt, norm = pick("uint8 graph"), pick("float generator"), pick("normalization")
        if served and flt and norm:
            frac = served["fraction_of_limit"]
            verdict = "meets" if frac >= 0.85 else "misses"
            bare = 100 * flt["fraction_of_limit"]
            share = 100 * norm["ms_per_batch"] / flt["ms_per_batch"]
            lines.append(
                f"- {fam} ({impl}): served uint8 graph at batch {top} = {100 * frac:.0f}% of the "
                "limit "
                f"({verdict} the 85% target; bare float generator {bare:.0f}%). The in-graph "
                f"normalization and uint8 conversions alone take {norm['ms_per_batch']:.1f} ms "
                f"= {share:.1f}% of the generator's time."
            )
        for r in rows:  # the throughput configurations, if measured
            if (
                r["family"] == fam
                and r["transpose_impl"] == impl
                and r["batch"] == top
                and r["instances"] > 1
            ):
                frac = r["fraction_of_limit"]
                lines.append(
                    f"- {fam} ({impl}), {r['instances']} concurrent instances: "
                    f"{r['tiles_per_s']:.2f} tiles/s at batch {top} = {100 * frac:.0f}% of the "
                    f"limit ({'meets' if frac >= 0.85 else 'misses'} the 85% target)."
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
    ap.add_argument(
        "--transpose-impl",
        nargs="+",
        default=["auto"],
        choices=["native", "phase", "auto"],
        help="how the generators' transposed convolutions are computed (same math; auto: the "
        "models' default)",
    )
    ap.add_argument(
        "--thin-head",
        nargs="+",
        default=["rows"],
        choices=["rows", "native"],
        help="how a thin output convolution (the ResNet generator's 7x7 RGB head) is computed: "
        "rows (the models' default: row convolutions + column sum) or native (one convolution); "
        "several alternate",
    )
    ap.add_argument(
        "--instances",
        type=int,
        nargs="+",
        default=[1],
        help="also time N concurrent sessions of the served graph (threads / N each) for every "
        "N > 1 given: the throughput configuration (Triton instance_count N)",
    )
    ap.add_argument("--matmul-reps", type=int, default=5, help="matmul products per reference")
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
        "matmul_reps": args.matmul_reps,
        "load_before": machine_load(),
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
                fam,
                args.tile,
                args.batches,
                args.threads,
                args.repeats,
                Path(tmp),
                args.transpose_impl,
                args.matmul_reps,
                args.thin_head,
                args.instances,
            )
    limit_after = matmul_flops(args.threads)
    meta["matmul_gflops_after"] = limit_after / 1e9
    meta["load_after"] = machine_load()
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
