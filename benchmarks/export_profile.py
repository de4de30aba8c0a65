"""Where an exported generator spends its time in ONNX Runtime: per operator type and node.

Exports the classic generator of a family with random weights (unet_256 for unet/pix2pix,
resnet_9blocks for cyclegan; ``transpose_impl`` as in the models' default), runs it in ONNX
Runtime with the profiler on (2 intra-op threads, as served), and prints the median kernel time
per node over the timed runs, summed per operator type, plus each heavy node's GFLOP/s next to
the fp32 ``torch.mm`` rate measured in the same run. ``ReorderInput``/``ReorderOutput`` are
ONNX Runtime's NCHWc layout conversions around its blocked convolutions.

    .venv/bin/python benchmarks/export_profile.py --family unet --batch 8 \
        --out docs/benchmarks/export_profile.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from stainbench.bench.limits import fp32_matmul_gflops
from stainbench.export.onnx import export_float_graph
from stainbench.models import create_model

ARCH = {
    "unet": ("unet", {"depth": 8, "base_width": 64}),
    "cyclegan": ("resnet", {"n_blocks": 9, "base_width": 64}),
}


def conv_flops(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """FLOPs (2 x multiply-adds) of every Conv2d / ConvTranspose2d, keyed by module name."""
    out: dict[str, float] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):

            def hook(m, inp, res, name=name):
                k = m.kernel_size[0] * m.kernel_size[1]
                if isinstance(m, torch.nn.ConvTranspose2d):
                    macs = inp[0].numel() * m.out_channels * k
                else:
                    macs = res.numel() * m.in_channels * k
                out[name] = 2.0 * macs

            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=sorted(ARCH), default="unet")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--runs", type=int, default=4, help="runs after one warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--out", type=Path, default=None, help="Markdown file to write")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    arch, kw = ARCH[args.family]
    torch.manual_seed(0)
    model = create_model(arch, in_channels=3, out_channels=3, **kw).eval()
    work = Path(tempfile.mkdtemp())
    path = work / "model.onnx"
    example = torch.rand(1, 3, args.tile, args.tile) * 2 - 1
    export_float_graph(model, example, path)
    flops = conv_flops(model, example)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(work / "profile")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (args.batch, 3, args.tile, args.tile))
    x = x.astype(np.float32)
    limit_before = fp32_matmul_gflops(repeats=10)
    walls = []
    for i in range(args.runs + 1):
        t = time.perf_counter()
        sess.run(None, {"x": x})
        if i:
            walls.append(time.perf_counter() - t)
    limit_after = fp32_matmul_gflops(repeats=10)
    events = json.loads(Path(sess.end_profiling()).read_text())
    times: dict[str, list[float]] = defaultdict(list)
    op: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[e["name"]].append(e["dur"] / 1e3)  # ms
            op[e["name"]] = e["args"].get("op_name", "?")
    # drop the warm-up run: keep each node's last `runs` timings
    median = {n: float(np.median(v[-args.runs :])) for n, v in times.items()}
    total = sum(median.values())
    by_type: dict[str, float] = defaultdict(float)
    for n, v in median.items():
        by_type[op[n]] += v
    wall = float(np.median(walls)) * 1e3
    total_gflop = sum(flops.values()) * args.batch / 1e9
    limit = max(limit_before, limit_after)
    lines = [
        f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}; "
        f"onnxruntime {ort.__version__}, torch {torch.__version__}, {args.threads} threads",
        f"- command: `python benchmarks/export_profile.py {' '.join(sys.argv[1:])}`",
        f"- {args.family} generator, batch {args.batch}, {args.tile}x{args.tile}: "
        f"{total_gflop:.1f} GFLOP per run; wall {wall:.0f} ms (median of {args.runs}) = "
        f"{total_gflop / wall * 1e3:.1f} GFLOP/s; fp32 torch.mm {limit_before:.1f} before, "
        f"{limit_after:.1f} after -> {100 * total_gflop / wall * 1e3 / limit:.0f}% of the "
        "higher",
        f"- sum of node kernel times {total:.0f} ms",
        "",
        "| operator | ms | share |",
        "| --- | ---: | ---: |",
    ]
    for k, v in sorted(by_type.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {v:.1f} | {100 * v / total:.1f}% |")
    lines += ["", "| node | operator | ms |", "| --- | --- | ---: |"]
    for n, v in sorted(median.items(), key=lambda kv: -kv[1])[: args.top]:
        lines.append(f"| `{n.removesuffix('_kernel_time')}` | {op[n]} | {v:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
