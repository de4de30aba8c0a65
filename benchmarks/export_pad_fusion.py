"""ONNX Runtime on the exported unet_256: with and without the Pad-into-Conv fusion.

The phase-decomposed transposed convolutions (``transpose_impl: auto``) export one ``Pad``
per phase. The torchscript exporter writes each with an empty optional ``constant_value``
input, which stops ONNX Runtime's Pad fusion; ``stainbench.export.onnx.drop_trailing_empty_inputs``
removes those names. This script exports the classic unet_256 generator (random weights,
float32 in and out) four ways and times them in one process, round-robin, each timing right
after a fresh fp32 ``torch.mm`` reference (2048^3, best of 5):

- ``auto16_nofix``: the models' default (phases for inputs up to 16x16), Pads as exported;
- ``auto16``: the same graph with the empty inputs dropped (what ``stainbench export`` writes);
- ``auto32``: phases up to 32x32 inputs, empty inputs dropped;
- ``native``: ONNX ConvTranspose everywhere.

    .venv/bin/python benchmarks/export_pad_fusion.py --batch 8 --rounds 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import stainbench.models.layers as layers
from stainbench.bench.limits import fp32_matmul_gflops
from stainbench.export.onnx import export_float_graph
from stainbench.models import create_model

GFLOP_PER_TILE = 12.1  # unet_256 forward at 256x256 (FlopCounterMode)


def export(work: Path, name: str, impl: str, max_pixels: int, fix: bool) -> Path:
    default = layers.AUTO_PHASE_MAX_PIXELS
    layers.AUTO_PHASE_MAX_PIXELS = max_pixels
    try:
        torch.manual_seed(0)
        model = create_model(
            "unet", in_channels=3, out_channels=3, depth=8, base_width=64, transpose_impl=impl
        ).eval()
        path = work / f"{name}.onnx"
        export_float_graph(model, torch.rand(1, 3, 256, 256), path, drop_empty_inputs=fix)
    finally:
        layers.AUTO_PHASE_MAX_PIXELS = default
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=8, help="timed rounds; the first is dropped")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp())
    variants = {
        "auto16_nofix": ("auto", 256, False),
        "auto16": ("auto", 256, True),
        "auto32": ("auto", 1024, True),
        "native": ("native", 256, True),
    }
    sessions = {}
    for name, (impl, max_pixels, fix) in variants.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        path = export(work, name, impl, max_pixels, fix)
        sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (args.batch, 3, 256, 256)).astype(np.float32)
    outs = {k: s.run(None, {"x": x})[0] for k, s in sessions.items()}
    rows: dict[str, list[tuple[float, float, float]]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for name, sess in sessions.items():
            limit = fp32_matmul_gflops()
            t = time.perf_counter()
            sess.run(None, {"x": x})
            dt = time.perf_counter() - t
            rows[name].append((dt, limit, GFLOP_PER_TILE * args.batch / dt / limit))
    print(f"batch {args.batch}, 256x256, {args.threads} threads, onnxruntime {ort.__version__}")
    print("| variant | max abs diff vs native | median ms | median matmul GFLOP/s "
          "| median % of limit | per round % |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, r in rows.items():
        r = r[1:]
        diff = float(np.abs(outs[name] - outs["native"]).max())
        print(
            f"| {name} | {diff:.1e} | {1e3 * float(np.median([v[0] for v in r])):.0f} "
            f"| {float(np.median([v[1] for v in r])):.1f} "
            f"| {100 * float(np.median([v[2] for v in r])):.1f}% "
            f"| {', '.join(f'{100 * v[2]:.0f}' for v in r)} |"
        )


if __name__ == "__main__":
    main()
