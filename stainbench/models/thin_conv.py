"""A convolution with few output channels, computed as row convolutions and a column sum.

CPU convolution kernels (ONNX Runtime's MLAS, oneDNN) vectorize over blocks of 8-16 output
channels: a layer with 3 output channels, such as the 7x7 RGB head of the CycleGAN generator
(64 -> 3 channels at full resolution), leaves most of every block empty and runs at 12-15%
of the matrix-product rate on this project's CPU (``docs/benchmarks/export.md``), although it
does as many multiply-adds per tile as a 256-channel 3x3 convolution at a quarter of the
resolution.

The same result, computed in two steps with exactly the same multiply-adds plus a small sum:

1. a ``1 x kW`` convolution into ``C_out * kH`` channels, one per (output channel, kernel row):
   ``z[(c, i), y, x] = sum_{ci, j} w[c, ci, i, j] * in[ci, y, x + j]``;
2. a grouped ``kH x 1`` convolution with fixed one-hot weights that adds each output channel's
   ``kH`` rows, shifted by their row offset: ``out[c, y, x] = bias[c] + sum_i z[(c, i), y + i, x]``.

Step 1 has ``kH`` times more output channels (21 for a 7x7 RGB head) and runs 2.5-3x faster;
step 2 costs ``kH`` additions per output value.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

ThinConvImpl = Literal["native", "rows"]


def row_split_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: tuple[int, int],
    row_sum: torch.Tensor,
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` (stride 1, groups 1) in two steps.

    ``x`` ``(B, C_in, H, W)``, ``weight`` ``(C_out, C_in, kH, kW)``, ``row_sum`` the one-hot
    ``(C_out, kH, kH, 1)`` weights of step 2 (:func:`row_sum_weight`). Returns
    ``(B, C_out, H + 2*pH - kH + 1, W + 2*pW - kW + 1)``.
    """
    c_out, c_in, k_h, k_w = weight.shape
    # (C_out, C_in, kH, kW) -> (C_out * kH, C_in, 1, kW), channel index c * kH + i
    rows = weight.permute(0, 2, 1, 3).reshape(c_out * k_h, c_in, 1, k_w)
    z = F.conv2d(x, rows, None, padding=padding)
    return F.conv2d(z, row_sum, bias, groups=c_out)


def row_sum_weight(out_channels: int, k_h: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Step 2's weights ``(C_out, kH, kH, 1)``: a group's channel ``i`` enters at row ``i``."""
    w = torch.zeros(out_channels, k_h, k_h, 1, dtype=dtype)
    idx = torch.arange(k_h)
    w[:, idx, idx, 0] = 1.0
    return w


class ThinConv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` for few output channels, with the row-split computation.

    Same parameters, initialization and ``state_dict`` keys as ``nn.Conv2d`` (checkpoints of
    either load into the other); only stride 1, dilation 1, groups 1 and zero padding are
    split, anything else runs the plain convolution. ``impl``: ``"rows"`` (default) the split,
    in PyTorch and in exported ONNX graphs (faster in both here: ``docs/benchmarks/export.md``),
    ``"native"`` the plain convolution.
    """

    def __init__(self, *args: object, impl: ThinConvImpl = "rows", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if impl not in ("native", "rows"):
            raise ValueError(f"impl must be 'native' or 'rows', got {impl!r}")
        self.impl = impl
        k_h = self.kernel_size[0]
        self._split_ok = (
            self.stride == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
            and k_h > 1
        )
        # fixed one-hot weights of the row sum: a buffer outside the state_dict
        self.register_buffer(
            "row_sum", row_sum_weight(self.out_channels, k_h, self.weight.dtype), persistent=False
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", impl={self.impl}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self._split_ok and self.impl == "rows"):
            return super().forward(input)
        return row_split_conv2d(
            input,
            self.weight,
            self.bias,
            self.padding,  # type: ignore[arg-type]  (a (pH, pW) tuple, checked above)
            self.row_sum.to(input.dtype),
        )
