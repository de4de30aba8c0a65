"""Layer-level speed of the generators' upsampling: native transposed conv vs phase convs.

For every upsampling layer of unet_256 (kernel 4, stride 2, padding 1) and resnet_9blocks
(kernel 3, stride 2, padding 1, output padding 1) at a 256x256 tile, batch 1, this times one
forward + backward (input, weight and bias gradients) of ``nn.ConvTranspose2d`` and of
:class:`stainbench.models.phase_transpose.PhaseConvTranspose2d` holding the same weights.
Rounds alternate the two implementations next to a fresh fp32 matmul timing, so both see the
same machine load; the table reports medians over rounds, GFLOP/s (3x the forward FLOPs) and
each implementation's rate as a fraction of the same round's matmul rate.

``--ort-batch N`` (N > 0) also exports both implementations of each layer to ONNX (the phase
layer becomes Pad/Conv/Concat/Gather/DepthToSpace nodes, the native one a ConvTranspose) and
times ONNX Runtime inference of a batch of N, alternating likewise.

    .venv/bin/python benchmarks/upsample_layers.py --rounds 5 --json /tmp/up.json
    .venv/bin/python benchmarks/upsample_layers.py --rounds 5 --train off --ort-batch 8
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from stainbench.bench.limits import fp32_matmul_gflops, machine_load
from stainbench.export.onnx import export_float_graph
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


def ort_session(m: nn.Module, c_in: int, side: int, path: Path) -> ort.InferenceSession:
    """``m`` exported (batch dynamic) and loaded in ONNX Runtime, threads as torch's."""
    export_float_graph(m, torch.zeros(1, c_in, side, side), path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def alternate(
    fns: dict[str, Callable[[], object]], flops: float, rounds: int, n: int
) -> dict[str, float]:
    """Median seconds per call and median fraction of the same round's matmul rate."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    fracs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            ref = fp32_matmul_gflops(repeats=10)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            t = (time.perf_counter() - t0) / n
            times[name].append(t)
            fracs[name].append(flops / t / 1e9 / ref)
    out = {}
    for name in fns:
        out[f"{name}_ms"] = 1e3 * statistics.median(times[name])
        out[f"{name}_fraction"] = statistics.median(fracs[name])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--train", choices=["on", "off"], default="on", help="time fwd+bwd in torch")
    ap.add_argument("--ort-batch", type=int, default=0, help="also time ONNX Runtime (batch)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="upsample_layers_"))
    load_before = machine_load()
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

        row: dict = {"layer": label, "c_in": cin, "c_out": cout, "side": side, "kernel": k}
        line = f"{label:20s} {cin:5d}->{cout:4d} @{side:3d} k{k}:"
        if args.train == "on":

            def step(m: nn.Module, x: torch.Tensor = x, grad: torch.Tensor = grad) -> None:
                m(x).backward(grad)

            fns = {name: (lambda m=m: step(m)) for name, m in impls.items()}
            res = alternate(fns, flops, args.rounds, n)
            row.update({f"train_{key}": v for key, v in res.items()})
            row["train_speedup"] = res["native_ms"] / res["phase_ms"]
            line += (
                f" fwd+bwd native {res['native_ms']:7.2f} ms ({100 * res['native_fraction']:3.0f}%)"
                f" phase {res['phase_ms']:7.2f} ms ({100 * res['phase_fraction']:3.0f}%)"
                f" x{row['train_speedup']:.2f}"
            )
        if args.ort_batch > 0:
            b = args.ort_batch
            xb = np.random.default_rng(0).standard_normal((b, cin, side, side)).astype(np.float32)
            sessions = {
                name: ort_session(m, cin, side, tmp / f"{label.replace(' ', '_')}_{name}.onnx")
                for name, m in impls.items()
            }
            fns = {
                name: (lambda s=s, xb=xb: s.run(None, {"x": xb})) for name, s in sessions.items()
            }
            n_ort = max(3, min(20, int(3e9 / (b * flops / 3))))
            res = alternate(fns, b * flops / 3, args.rounds, n_ort)
            row.update({f"ort_{key}": v for key, v in res.items()})
            row["ort_speedup"] = res["native_ms"] / res["phase_ms"]
            line += (
                f" | ORT b={b} native {res['native_ms']:7.2f} ms "
                f"({100 * res['native_fraction']:3.0f}%) phase {res['phase_ms']:7.2f} ms "
                f"({100 * res['phase_fraction']:3.0f}%) x{row['ort_speedup']:.2f}"
            )
        rows.append(row)
        print(line, flush=True)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "uptime_before": load_before,
        "uptime_after": machine_load(),
        "command": "python benchmarks/upsample_layers.py " + " ".join(sys.argv[1:]),
    }
    print(f"load before: {meta['uptime_before']}\nload after:  {meta['uptime_after']}")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
