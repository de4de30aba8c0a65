"""Winograd against torch's convolution, layer by layer: which layers of the classic models gain.

For each layer shape of unet_256, resnet_9blocks and the 70x70 PatchGAN at a 256x256 tile
(batch 1, float32), one forward + backward (input, weight and bias gradients) of torch's
convolution against :func:`stainbench.models.winograd.winograd_conv2d` with the tiles ``m``
given, median of ``--reps`` timings, the variants alternating. The UNet's 4x4 stride-2
convolutions and transposed convolutions are mapped onto 2x2 stride-1 ones (below: the
candidates this benchmark measured; they lose, so the models do not use them).

    .venv/bin/python benchmarks/winograd_layers.py --out docs/benchmarks/winograd_layers.md

Results are provisional on a shared machine: the script records ``uptime`` before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from stainbench.bench.limits import fp32_matmul_gflops, machine_load
from stainbench.models.winograd import winograd_conv2d
from stainbench.training.allocator import keep_freed_memory

ConvFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def conv_k4s2(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, m: int
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride=2, padding=1)`` for a 4x4 kernel and even ``H, W``.

    The zero-padded input's 2x2 pixel blocks become channels (``pixel_unshuffle``: channel
    ``4 c + 2 u + v`` holds pixel ``(2i + u, 2j + v)`` of channel ``c``), and the 4x4 stride-2
    kernel becomes a 2x2 stride-1 one over them. ``(N, C_in, H, W)`` -> ``(N, C_out, H/2, W/2)``.
    """
    c_out, c_in = weight.shape[:2]
    blocks = F.pixel_unshuffle(F.pad(x, (1, 1, 1, 1)), 2)  # (N, 4 C_in, H/2 + 1, W/2 + 1)
    # weight[o, c, 2a + u, 2b + v] -> k2[o, 4c + 2u + v, a, b]
    k2 = weight.view(c_out, c_in, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4)
    return winograd_conv2d(blocks, k2.reshape(c_out, 4 * c_in, 2, 2), bias, m)


def conv_transpose_k4s2(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, m: int
) -> torch.Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride=2, padding=1)`` for a 4x4 kernel.

    Output pixel ``(2i + s, 2j + t)`` is a 2x2 correlation of input pixels ``i - 1 + s ..
    i + s`` (likewise columns) with kernel taps ``3 - s - 2 u``: one 2x2 convolution of the
    input padded by one pixel, into ``4 C_out`` channels (phase ``(s, t)`` major), whose
    ``(H + 1) x (W + 1)`` outputs phase ``(s, t)`` reads from offset ``(s, t)``.
    ``weight`` ``(C_in, C_out, 4, 4)``; ``(N, C_in, H, W)`` -> ``(N, C_out, 2H, 2W)``.
    """
    c_in, c_out = weight.shape[:2]
    n, _, h, w = x.shape
    # k2[(s, t, o), c, u, v] = weight[c, o, 3 - s - 2u, 3 - t - 2v]
    flipped = weight.flip((2, 3)).view(c_in, c_out, 2, 2, 2, 2)  # [c, o, u, s, v, t]
    k2 = flipped.permute(3, 5, 1, 0, 2, 4).reshape(4 * c_out, c_in, 2, 2)
    z = winograd_conv2d(F.pad(x, (1, 1, 1, 1)), k2, None, m)  # (N, 4 C_out, H + 1, W + 1)
    z = z.view(n, 2, 2, c_out, h + 1, w + 1)
    rows = [
        torch.stack([z[:, s, t, :, s : s + h, t : t + w] for t in (0, 1)], dim=-1) for s in (0, 1)
    ]
    out = torch.stack(rows, dim=3).view(n, c_out, 2 * h, 2 * w)  # (N, C_out, H, 2, W, 2)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


# (name, kind, C_in, C_out, input side, tiles): the layers of the classic models at 256 x 256
LAYERS = [
    ("resnet block 3x3, 256 ch @ 64", "res", 256, 256, 64, (2, 4)),
    ("patchgan 4x4 s1, 256->512 @ 32", "k4s1", 256, 512, 32, (2, 3)),
    ("unet enc 4x4 s2, 64->128 @ 128", "k4s2", 64, 128, 128, (2, 3, 4)),
    ("unet enc 4x4 s2, 128->256 @ 64", "k4s2", 128, 256, 64, (2, 3, 4)),
    ("unet enc 4x4 s2, 256->512 @ 32", "k4s2", 256, 512, 32, (2, 3, 4)),
    ("unet dec 4x4 s2 T, 1024->256 @ 16", "T", 1024, 256, 16, (2, 3)),
    ("unet dec 4x4 s2 T, 512->128 @ 32", "T", 512, 128, 32, (2, 3, 4)),
    ("unet dec 4x4 s2 T, 256->64 @ 64", "T", 256, 64, 64, (2, 3, 4)),
]


def layer(kind: str, c_in: int, c_out: int, side: int) -> tuple[ConvFn, Callable, tuple, float]:
    """(torch's op, the Winograd op factory taking m, weight shape, forward GFLOP)."""
    if kind == "res":  # after reflection padding: a valid 3x3 convolution
        return (
            lambda x, w, b: F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, b),
            lambda m: (
                lambda x, w, b: winograd_conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, b, m)
            ),
            (c_out, c_in, 3, 3),
            2 * c_in * c_out * 9 * side * side / 1e9,
        )
    if kind == "k4s1":
        return (
            lambda x, w, b: F.conv2d(x, w, b, padding=1),
            lambda m: lambda x, w, b: winograd_conv2d(F.pad(x, (1, 1, 1, 1)), w, b, m),
            (c_out, c_in, 4, 4),
            2 * c_in * c_out * 16 * (side - 1) ** 2 / 1e9,
        )
    if kind == "k4s2":
        return (
            lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
            lambda m: lambda x, w, b: conv_k4s2(x, w, b, m),
            (c_out, c_in, 4, 4),
            2 * c_in * c_out * 16 * (side // 2) ** 2 / 1e9,
        )
    return (
        lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1),
        lambda m: lambda x, w, b: conv_transpose_k4s2(x, w, b, m),
        (c_in, c_out, 4, 4),
        2 * c_in * c_out * 16 * side * side / 1e9,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="timings per variant (median)")
    p.add_argument("--out", type=Path, default=None, help="Markdown file to write")
    args = p.parse_args()
    torch.manual_seed(0)
    load_before = machine_load()
    lines = [
        "| layer (batch 1) | GFLOP fwd+bwd (direct) | torch ms | Winograd ms per tile m "
        "| best | speed-up |",
        "| --- | ---: | ---: | --- | --- | ---: |",
    ]
    keep_freed_memory()  # as `stainbench train` runs
    limit = fp32_matmul_gflops(repeats=10)
    print(f"fp32 matmul: {limit:.1f} GFLOP/s with {torch.get_num_threads()} threads")
    for name, kind, c_in, c_out, side, tiles in LAYERS:
        native, wino, w_shape, gflop = layer(kind, c_in, c_out, side)
        x = torch.randn(1, c_in, side, side, requires_grad=True)
        w = (torch.randn(w_shape) * 0.02).requires_grad_()
        b = torch.zeros(c_out, requires_grad=True)
        fns = {"torch": native, **{f"m={m}": wino(m) for m in tiles}}
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.reps + 1):  # the first round warms up
            for key, fn in fns.items():
                t = time.perf_counter()
                y = fn(x, w, b)
                y.backward(torch.ones_like(y))
                times[key].append(time.perf_counter() - t)
                x.grad = w.grad = b.grad = None
        ms = {k: 1e3 * statistics.median(v[1:]) for k, v in times.items()}
        best = min(ms, key=ms.__getitem__)
        per_tile = ", ".join(f"{k}: {v:.1f}" for k, v in ms.items() if k != "torch")
        speedup = ms["torch"] / ms[best]
        print(f"{name:36s} torch {ms['torch']:6.1f} ms | {per_tile} | {speedup:.2f}x")
        lines.append(
            f"| {name} | {3 * gflop:.2f} | {ms['torch']:.1f} | {per_tile} | {best} "
            f"| {speedup:.2f}x |"
        )
    head = [
        f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul {limit:.1f} "
        "GFLOP/s",
        f"- load: before `{load_before}`, after `{machine_load()}`",
        "- command: `python benchmarks/winograd_layers.py " + " ".join(sys.argv[1:]) + "`",
        "",
    ]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(head + lines) + "\n")


if __name__ == "__main__":
    main()
