"""Serving overhead: Triton (python backend running ONNX Runtime) vs in-process ONNX Runtime.

For a small UNet exported the way ``stainbench export`` does it (uint8 tile graph, the
product's python-backend ``model.py``), this measures

- in-process ONNX Runtime at batch 1 (the same session options as the served model, in a
  clean child process that imports only onnxruntime and numpy, like the stub): p50
  latency and tiles/s, measured right before and right after each served point (A-B-A) and
  averaged, so that the ratio compares numbers taken under the same machine load;
- through the real tritonserver (gRPC and HTTP, concurrency 1/2/4/8, client batch 1) with
  :func:`stainbench.bench.latency.measure_latency` (perf_analyzer's method);
- overhead ratio = served tiles/s / in-process tiles/s, and added p50 latency at
  concurrency 1 = served p50 - in-process p50;

for a few server variants (the levers): the dynamic batcher's queue delay, ORT thread
spinning, and instances x threads on the 2 cores; plus the HTTP payload levers (gzip response,
JSON instead of binary tensors) at concurrency 1.

Run: ``.venv/bin/python benchmarks/serving_overhead.py`` (about 7 minutes; ``--quick`` for a
smoke run). Writes ``--out`` (Markdown) and the JSON beside it: by default under the temp
folder; ``--out docs/benchmarks/serving.md`` updates the committed result.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stainbench.bench.latency import LatencySettings, measure_latency  # noqa: E402
from stainbench.serving.server import TritonServer  # noqa: E402

FINDINGS = "<!-- findings: written by hand, kept when the script rewrites this file -->"
#: Server variants: name -> (queue delay us, instances, ORT threads per instance, spinning)
VARIANTS: dict[str, tuple[int, int, int, bool]] = {
    "default": (500, 1, 0, False),  # export's defaults: 500 us delay, 1 x cores threads
    "delay0": (0, 1, 0, False),
    "spinning": (500, 1, 0, True),
    "2inst_1thread": (0, 2, 1, False),
}


#: where results go unless --out says otherwise (never the committed docs/benchmarks/)
RESULTS_DIR = Path(tempfile.gettempdir()) / "stainbench-benchmarks"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def matmul_gflops(threads: int = 2, n: int = 1024, reps: int = 20) -> float:
    """This CPU's fp32 matmul rate in torch (GFLOP/s), the physical reference."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def build_model(out: Path, depth: int, width: int, tile: int) -> tuple[Path, float, Any]:
    """Export a UNet tile model; returns (model.onnx, GFLOP per tile, translator)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from stainbench.export.onnx import TileTranslator, export_onnx
    from stainbench.models import create_model

    torch.manual_seed(0)
    generator = create_model("unet", depth=depth, base_width=width).eval()
    half = np.full(3, 127.5, np.float32)
    translator = TileTranslator(generator, half, half, half, half, 2**depth).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        generator(torch.zeros(1, 3, tile, tile))
    files = export_onnx(translator, out, sample_tile=tile)
    return files.model, counter.get_total_flops() / 1e9, translator


def write_variants(repo: Path, onnx_path: Path, tile: int, depth: int) -> list[str]:
    """One served model per variant, written with the export writer (python flavour)."""
    from stainbench.export.profile import TritonSettings
    from stainbench.export.triton import (
        ModelIdentity,
        build_config,
        python_model_source,
        write_model,
    )

    source = python_model_source()
    names = []
    for name, (delay, instances, threads, spin) in VARIANTS.items():
        settings = TritonSettings(
            max_batch_size=8,
            max_queue_delay_us=delay,
            instance_count=instances,
            intra_op_threads=threads,
            warmup=True,
            warmup_tile=tile,
        )
        identity = ModelIdentity(family="unet", size_multiple=2**depth, manifest_hash="")
        cfg = build_config(name, "python", settings, identity)
        code = source
        if spin:
            code = code.replace('allow_spinning", "0"', 'allow_spinning", "1"')
            assert code != source, "model.py no longer sets allow_spinning: update the benchmark"
        warm = np.random.default_rng(1).integers(0, 256, (tile, tile, 3), dtype=np.uint8)
        write_model(repo, name, cfg, {"model.onnx": onnx_path, "model.py": code}, warmup_tile=warm)
        names.append(name)
    return names


def _time_session(sess: Any, tiles: np.ndarray, seconds: float, batch: int) -> dict:
    name = sess.get_inputs()[0].name
    lat = []
    t0 = time.perf_counter()
    i = 0
    while time.perf_counter() - t0 < seconds or len(lat) < 10:
        x = tiles[[(i * batch + j) % len(tiles) for j in range(batch)]]
        t = time.perf_counter()
        sess.run(None, {name: x})
        lat.append((time.perf_counter() - t) * 1000)
        i += 1
    wall = time.perf_counter() - t0
    return {
        "batch": batch,
        "p50_ms": float(np.percentile(lat, 50)),
        "tiles_s": len(lat) * batch / wall,
        "requests": len(lat),
    }


def _reference_main(conn: Any, onnx_path: str, tiles: np.ndarray) -> None:
    """Child process: one ORT session with the served model.py's options, timed on request.

    It starts its own session like ``TritonServer`` does for tritonserver: with Linux's
    scheduler autogroups (``/proc/sys/kernel/sched_autogroup_enabled``) a session is one
    scheduling group, so on a busy machine both sides get the same share of the CPU.
    """
    os.setsid()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, len(os.sched_getaffinity(0)))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    _time_session(sess, tiles, 0.0, 1)  # warm-up
    while (msg := conn.recv()) is not None:
        conn.send(_time_session(sess, tiles, *msg))


class InProcessReference:
    """ONNX Runtime "in-process" reference, run in its own clean process (only onnxruntime
    and numpy imported, like the python-backend stub), so that the benchmark's own state
    (torch's thread pool, client threads) cannot slow it down."""

    def __init__(self, onnx_path: Path, tiles: np.ndarray) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_reference_main, args=(child, str(onnx_path), tiles))
        self.proc.start()

    def measure(self, seconds: float, batch: int = 1) -> dict:
        self.conn.send((seconds, batch))
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=30)


def paired_added_latency(url: str, model: str, onnx_path: Path, tiles: np.ndarray, n: int) -> dict:
    """Added latency of one tile, robust to load drift: alternate one in-process run and one
    served request ``n`` times; report the median of the paired differences (ms)."""
    import onnxruntime as ort

    from stainbench.serving.client import TritonClient

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, len(os.sched_getaffinity(0)))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    local, served = [], []
    with TritonClient(url) as client:
        for i in range(n + 3):
            x = tiles[i % len(tiles)][None]
            t = time.perf_counter()
            sess.run(None, {name: x})
            t1 = time.perf_counter()
            client.infer(model, x)
            t2 = time.perf_counter()
            if i >= 3:  # warm-up
                local.append((t1 - t) * 1000)
                served.append((t2 - t1) * 1000)
    a, b = np.array(local), np.array(served)
    return {
        "pairs": n,
        "inprocess_p50_ms": float(np.median(a)),
        "served_p50_ms": float(np.median(b)),
        "added_ms": float(np.median(b - a)),
        "added_iqr_ms": [float(np.percentile(b - a, 25)), float(np.percentile(b - a, 75))],
    }


def payload_levers(server: TritonServer, model: str, tiles: np.ndarray, n: int) -> list[dict]:
    """Sequential HTTP requests with gzip responses / JSON tensors vs binary (p50 ms)."""
    import tritonclient.http as th

    client = th.InferenceServerClient(server.http_url.split("//")[1], network_timeout=120)
    rows = []
    cases = [
        ("binary, identity encoding", True, None),
        ("binary, gzip response", True, "gzip"),
        ("JSON tensors", False, None),
    ]
    for label, binary, compression in cases:
        lat = []
        for i in range(n + 3):
            x = tiles[i % len(tiles)][None]
            inp = th.InferInput("INPUT", list(x.shape), "UINT8")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = th.InferRequestedOutput("OUTPUT", binary_data=binary)
            t = time.perf_counter()
            client.infer(model, [inp], outputs=[out], response_compression_algorithm=compression)
            if i >= 3:
                lat.append((time.perf_counter() - t) * 1000)
        rows.append({"payload": label, "p50_ms": float(np.median(lat)), "requests": n})
    client.close()
    return rows


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def write_markdown(path: Path, res: dict) -> None:
    m = res["machine"]
    lines = [
        "# Serving overhead: Triton vs in-process ONNX Runtime",
        "",
        f"**Provisional**: measured on a shared machine ({m['cpu_count']} cores, other jobs "
        "running); numbers move with the load shown. Ratios compare numbers taken minutes "
        "apart in one run; repeat on a quiet machine before quoting them.",
        "",
        f"- date: {res['date']}",
        f"- command: `{res['command']}`",
        f"- machine: {m['platform']}, {m['cpu_count']} cores, {m['cpu']}",
        f"- load before: `{res['load_before']}`",
        f"- load after: `{res['load_after']}`",
        f"- versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}",
        f"- model: UNet depth {res['model']['depth']}, base width {res['model']['width']}, "
        f"{res['model']['params_m']:.2f} M parameters, {res['model']['gflop_per_tile']:.2f} GFLOP "
        f"per {res['model']['tile']}x{res['model']['tile']} tile; exported as the uint8 tile "
        "graph, served by the product's python-backend model.py",
        f"- fp32 matmul rate (torch, 2 threads): {m['matmul_gflops']:.0f} GFLOP/s, so the "
        f"physical floor is {res['model']['floor_ms']:.1f} ms per tile",
        f"- server start to ready ({len(res['variant_meaning'])} models): "
        f"{res['server_start_s']:.1f} s",
        f"- latency method: {res['settings']}",
        "",
        "## Summary",
        "",
        "| variant | protocol | best ratio (conc.) | added p50, windows (ms) | "
        "added p50, paired (ms) | added, decomposed (ms) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for s in res["summary"]:
        lines.append(
            f"| {s['variant']} | {s['protocol']} | {s['best_ratio']:.2f} ({s['best_conc']}) "
            f"| {s['added_p50_ms']:+.1f} | {s['added_paired_ms']:+.1f} "
            f"| {s.get('added_decomposed_ms', float('nan')):+.1f} |"
        )
    lines += [
        "",
        "Added p50, windows: served p50 at concurrency 1 minus the in-process p50 around it. "
        "Added p50, paired: one in-process run and one served request alternated "
        f"{res['paired'][0]['pairs'] if res['paired'] else 0} times, median of the paired "
        "differences (robust to load that drifts between windows). Added, decomposed: at "
        "concurrency 1, mean client latency minus the server's mean compute-infer time (the "
        "stub's execute: ONNX Runtime plus the python-side tensor handling) over the same "
        "windows: everything serving adds around the model, read from one measurement, so "
        "a busy machine inflates it least.",
    ]
    lines += [
        "",
        f"Targets: ratio >= 0.95 at the best concurrency; added p50 <= 3 ms. "
        f"Variants: {', '.join(f'`{k}` = {v}' for k, v in res['variant_meaning'].items())}.",
        "",
        "## Points",
        "",
        "In-process = ONNX Runtime in a clean child process, batch 1, mean of the runs just "
        "before and just after the point. Server split = Triton statistics per request over "
        "the same windows. CPU in cores (1.0 = one busy core).",
        "",
        "| variant | protocol | conc. | in-proc p50 | in-proc tiles/s | tiles/s | ratio | p50 | "
        "p95 | p99 | queue | infer | in+out | batch | client CPU | server CPU | stable |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        "---: | ---: | ---: | ---: | --- |",
    ]
    for r in res["points"]:
        p = r["point"]
        lat, srv = p["latency_ms"], p["server_ms"]
        io = (srv["compute_input"] or 0) + (srv["compute_output"] or 0)
        lines.append(
            f"| {r['variant']} | {p['protocol']} | {p['concurrency']} | "
            f"{fmt(r['inprocess']['p50_ms'])} | {fmt(r['inprocess']['tiles_s'])} | "
            f"{fmt(p['throughput_tiles_s'])} | {fmt(r['ratio'], 2)} | {fmt(lat['p50'])} | "
            f"{fmt(lat['p95'])} | {fmt(lat['p99'])} | {fmt(srv['queue'], 2)} | "
            f"{fmt(srv['compute_infer'])} | {fmt(io, 2)} | {fmt(srv['batch'], 2)} | "
            f"{fmt(p['client_cpu'], 2)} | {fmt(p['server_cpu'], 2)} | "
            f"{'yes' if p['stable'] else 'no'} |"
        )
    if res.get("payload"):
        lines += [
            "",
            "## HTTP payload levers (variant `delay0`, concurrency 1, sequential requests)",
            "",
            "| payload | p50 (ms) |",
            "| --- | ---: |",
        ]
        lines += [f"| {r['payload']} | {r['p50_ms']:.1f} |" for r in res["payload"]]
    lines.append("")
    text = "\n".join(lines)
    # hand-written findings below the marker survive a re-run
    if path.exists() and FINDINGS in path.read_text():
        text += "\n" + FINDINGS + path.read_text().split(FINDINGS, 1)[1]
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--width", type=int, default=16, help="UNet base width")
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--protocols", default="grpc,http")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--window", type=float, default=2.0, help="measurement window, s")
    ap.add_argument("--max-windows", type=int, default=6)
    ap.add_argument("--quick", action="store_true", help="smoke run: small model, short windows")
    ap.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / "serving.md",
        help="Markdown result (the JSON goes beside it); default under the temp folder, so a "
        "run never overwrites the committed docs/benchmarks/serving.md",
    )
    ap.add_argument(
        "--from-json", type=Path, help="only re-render the Markdown from a saved JSON result"
    )
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        res = json.loads(args.from_json.read_text())
        for s in res["summary"]:
            c1 = [
                r["point"]
                for r in res["points"]
                if r["variant"] == s["variant"]
                and r["point"]["protocol"] == s["protocol"]
                and r["point"]["concurrency"] == 1
            ]
            if c1 and "added_decomposed_ms" not in s:
                s["added_decomposed_ms"] = (
                    c1[0]["latency_ms"]["mean"] - c1[0]["server_ms"]["compute_infer"]
                )
        write_markdown(args.out, res)
        args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {args.out}")
        return 0
    if args.quick:
        args.depth, args.width, args.tile, args.window = 6, 8, 64, 0.5
        args.concurrency, args.max_windows = "1,4", 4
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    protocols = args.protocols.split(",")
    chosen = args.variants.split(",")

    import onnxruntime
    import torch

    load_before = uptime()
    work = Path(tempfile.mkdtemp(prefix="serving_overhead-"))
    onnx_path, gflop, translator = build_model(work / "onnx", args.depth, args.width, args.tile)
    params = sum(p.numel() for p in translator.parameters()) / 1e6
    repo = work / "repo"
    names = [n for n in write_variants(repo, onnx_path, args.tile, args.depth) if n in chosen]
    rate = matmul_gflops()
    tiles = np.random.default_rng(0).integers(0, 256, (32, args.tile, args.tile, 3), np.uint8)
    settings = LatencySettings(window_s=args.window, max_windows=args.max_windows)
    points: list[dict] = []
    ib_s = max(1.0, args.window)  # seconds of each in-process reference run
    pairs = 20 if args.quick else 80
    paired_rows: list[dict] = []
    t0 = time.perf_counter()
    with TritonServer(repo, models=names, timeout=300) as server:
        start_s = time.perf_counter() - t0
        print(f"server ready in {start_s:.1f} s: {server.ready_models}", flush=True)
        reference = InProcessReference(onnx_path, tiles)
        for name in names:
            for protocol in protocols:
                url = server.grpc_url if protocol == "grpc" else server.http_url
                before = reference.measure(ib_s)
                paired = paired_added_latency(url, name, onnx_path, tiles, n=pairs)
                paired.update(variant=name, protocol=protocol)
                paired_rows.append(paired)
                print(
                    f"{name:14s} {protocol:4s} paired: added {paired['added_ms']:+.1f} ms "
                    f"(in-process {paired['inprocess_p50_ms']:.1f}, served "
                    f"{paired['served_p50_ms']:.1f})",
                    flush=True,
                )
                for c in concurrencies:
                    s = dataclasses.replace(settings, concurrency=c)
                    p = measure_latency(url, name, tiles, s, server_pid=server.pid)
                    after = reference.measure(ib_s)
                    # A-B-A: the in-process reference is the mean of the runs around the point
                    base = {
                        k: (before[k] + after[k]) / 2 for k in ("p50_ms", "tiles_s", "requests")
                    }
                    before = after
                    ratio = p.throughput_tiles_s / base["tiles_s"]
                    row = {"variant": name, "inprocess": base, "ratio": ratio}
                    row["point"] = p.to_dict()
                    points.append(row)
                    print(
                        f"{name:14s} {protocol:4s} c={c}: {p.throughput_tiles_s:6.1f} tiles/s "
                        f"(in-process {base['tiles_s']:.1f}, ratio {ratio:.2f}), p50 "
                        f"{p.latency_ms.p50:.1f} ms (in-process {base['p50_ms']:.1f}), "
                        f"client CPU {p.client_cpu:.2f}, stable {p.stable}",
                        flush=True,
                    )
        payload = []
        if "delay0" in names and "http" in protocols:
            payload = payload_levers(server, "delay0", tiles, n=10 if args.quick else 40)
        reference.close()
    summary = []
    for name in names:
        for protocol in protocols:
            rows = [
                r for r in points if r["variant"] == name and r["point"]["protocol"] == protocol
            ]
            best = max(rows, key=lambda r: r["ratio"])
            c1 = [r for r in rows if r["point"]["concurrency"] == 1]
            added = (
                c1[0]["point"]["latency_ms"]["p50"] - c1[0]["inprocess"]["p50_ms"]
                if c1
                else float("nan")
            )
            pr = [r for r in paired_rows if r["variant"] == name and r["protocol"] == protocol]
            # load-robust: client latency minus the model's own compute, both from one window
            decomposed = (
                c1[0]["point"]["latency_ms"]["mean"] - c1[0]["point"]["server_ms"]["compute_infer"]
                if c1
                else float("nan")
            )
            summary.append(
                {
                    "variant": name,
                    "protocol": protocol,
                    "best_ratio": best["ratio"],
                    "best_conc": best["point"]["concurrency"],
                    "added_p50_ms": added,
                    "added_paired_ms": pr[0]["added_ms"] if pr else float("nan"),
                    "added_decomposed_ms": decomposed,
                }
            )
    meaning = {
        k: f"{v[1]} instance(s) x {v[2] or 'cores/instances'} threads, "
        f"queue delay {v[0]} us{', ORT spinning on' if v[3] else ''}"
        for k, v in VARIANTS.items()
        if k in names
    }
    res = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/serving_overhead.py " + " ".join(argv or sys.argv[1:]),
        "load_before": load_before,
        "load_after": uptime(),
        "machine": {
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "matmul_gflops": rate,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "tritonclient": importlib.metadata.version("tritonclient"),
            "tritonserver": "2.51.0 (nvidia-pytriton)",
        },
        "model": {
            "depth": args.depth,
            "width": args.width,
            "tile": args.tile,
            "params_m": params,
            "gflop_per_tile": gflop,
            "floor_ms": gflop / rate * 1000,
        },
        "server_start_s": start_s,
        "settings": (
            f"closed loop, client batch 1, windows of {args.window:g} s, stable when 3 windows "
            f"agree within 10% on tiles/s and p95, at most {args.max_windows} windows"
        ),
        "variant_meaning": meaning,
        "summary": summary,
        "points": points,
        "payload": payload,
        "paired": paired_rows,
        "inprocess_p50_spread_ms": statistics.pstdev([r["inprocess"]["p50_ms"] for r in points]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(args.out, res)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1, allow_nan=False) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    for s in summary:
        print(
            f"{s['variant']:14s} {s['protocol']:4s} best ratio {s['best_ratio']:.2f} "
            f"(c={s['best_conc']}), added p50 {s['added_p50_ms']:+.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
