"""Transposed convolution computed as regular convolutions, one per output phase.

A stride-``s`` transposed convolution writes output pixel ``o = s*i - p + k`` from input pixel
``i`` and kernel tap ``k``. Output pixels of one *phase* ``r = o mod s`` only receive taps
``k ≡ (r + p) mod s``: a stride-1 correlation of the input with that subset of the (flipped)
kernel. For ``kernel 4, stride 2, padding 1`` (the UNet's upsampling) the four phases (row
parity x column parity) are four 2x2 convolutions on the input padded by one pixel; for
``kernel 3, stride 2, padding 1, output_padding 1`` (the ResNet generator's) they are 1x1,
1x2, 2x1 and 2x2 convolutions. Their outputs are interleaved into the ``s``-times larger map.

This does exactly the transposed convolution's multiply-adds (no zeros inserted) but runs them
as ordinary convolutions, which oneDNN (torch on CPU) and ONNX Runtime's MLAS execute faster
than their transposed-convolution kernels, forward and backward.

:class:`PhaseConvTranspose2d` subclasses :class:`torch.nn.ConvTranspose2d`: same parameters
(``weight`` of shape ``(C_in, C_out, kH, kW)``, ``bias`` of shape ``(C_out,)``), same
initialization, same ``state_dict`` keys, so checkpoints of either class load into the other.
Configurations the decomposition does not cover (groups, dilation, output sizes other than
``stride x`` the input, an explicit ``output_size``) fall back to the transposed convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _phases(kernel: int, stride: int, padding: int) -> list[tuple[int, int, int]]:
    """Per output phase ``r``: ``(first tap of the flipped kernel, number of taps, offset)``.

    Output ``s*m + r`` of that phase is the correlation of input pixels ``m + offset ..
    m + offset + taps - 1`` with flipped-kernel taps ``first, first + s, ...``.
    """
    out = []
    for r in range(stride):
        k0 = (r + padding) % stride  # smallest tap reaching this phase
        taps = len(range(k0, kernel, stride))
        k_max = k0 + (taps - 1) * stride
        offset = (r + padding - k_max) // stride  # exact: r + p - k_max ≡ 0 (mod s)
        out.append((kernel - 1 - k_max, taps, offset))
    return out


def phase_decomposable(
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    output_padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> bool:
    """Whether the transposed convolution maps ``H -> stride*H`` with every phase covered."""
    if groups != 1 or dilation != (1, 1):
        return False
    return all(
        k + op - 2 * p == s and k >= s and 0 <= p < k
        for k, s, p, op in zip(kernel, stride, padding, output_padding, strict=True)
    )


class PhaseConvTranspose2d(nn.ConvTranspose2d):
    """:class:`torch.nn.ConvTranspose2d` whose forward runs ``stride**2`` phase convolutions.

    Input ``(B, C_in, H, W)`` float -> output ``(B, C_out, s*H, s*W)`` for the decomposable
    configurations (see :func:`phase_decomposable`; e.g. kernel 4 / stride 2 / padding 1, and
    kernel 3 / stride 2 / padding 1 / output_padding 1), equal to ``nn.ConvTranspose2d`` up to
    floating-point summation order. Other configurations run the transposed convolution, and
    so do, by choice:

    - inputs with more than ``max_pixels`` pixels (``H * W``; ``None``: no limit);
    - every input outside an ONNX export when ``only_in_export`` is set.

    In PyTorch (not in ONNX exports, where the ``Col2Im`` it needs is not in opset 17), inputs
    of at most ``gemm_max_pixels`` pixels run :func:`gemm_conv_transpose2d` instead (one matrix
    product and a col2im), which beats torch's transposed-convolution kernel on the UNet's
    weight-heavy inner levels (1x1 to 8x8 inputs; 0 disables it).

    Which path runs never changes the result, only the speed; no option is saved in the
    state_dict. Measured on this project's 2-core AVX2 CPU (``docs/benchmarks/train.md``):
    torch's own transposed convolution is faster than the phase convolutions at every layer of
    unet_256 and resnet_9blocks, while ONNX Runtime runs the phase convolutions faster on small
    inputs (up to 16x16 pixels, the UNet's inner levels) and its ConvTranspose faster on large
    ones; hence ``transpose_impl="auto"`` in :func:`stainbench.models.layers.upsample_conv`.
    """

    def __init__(
        self,
        *args: object,
        max_pixels: int | None = None,
        only_in_export: bool = False,
        gemm_max_pixels: int = 0,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1 or None, got {max_pixels}")
        if gemm_max_pixels < 0:
            raise ValueError(f"gemm_max_pixels must be >= 0, got {gemm_max_pixels}")
        self.max_pixels = max_pixels
        self.only_in_export = only_in_export
        self.gemm_max_pixels = gemm_max_pixels
        # the layer's geometry as int tuples (fixed at construction), and whether the phase
        # split covers it: decided once here, not on every forward
        self._geometry = tuple(
            tuple(v)  # type: ignore[arg-type]  (nn.ConvTranspose2d stores (h, w) tuples)
            for v in (
                self.kernel_size, self.stride, self.padding, self.output_padding, self.dilation
            )
        )  # fmt: skip
        self._phases_ok = self.padding_mode == "zeros" and phase_decomposable(
            *self._geometry, self.groups
        )

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", max_pixels={self.max_pixels}, only_in_export={self.only_in_export}"
            + f", gemm_max_pixels={self.gemm_max_pixels}"
        )

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (
            self.gemm_max_pixels
            and output_size is None
            and self.groups == 1
            and self.padding_mode == "zeros"
            and not torch.onnx.is_in_onnx_export()
            and input.shape[-2] * input.shape[-1] <= self.gemm_max_pixels
        ):
            return gemm_conv_transpose2d(input, self.weight, self.bias, *self._geometry)
        if (
            output_size is not None
            or not self._phases_ok
            or (self.only_in_export and not torch.onnx.is_in_onnx_export())
            # a traced (ONNX) graph takes the branch of the example's size: the same math
            or (self.max_pixels is not None and input.shape[-2] * input.shape[-1] > self.max_pixels)
        ):
            return super().forward(input, output_size)
        return phase_conv_transpose2d(input, self.weight, self.bias, *self._geometry[:3])


def gemm_conv_transpose2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    output_padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """``F.conv_transpose2d`` (groups 1) as a matrix product and a col2im (``F.fold``).

    ``x`` ``(B, C_in, H, W)``, ``weight`` ``(C_in, C_out, kH, kW)``: every input pixel's
    contributions ``weight^T x`` ``(B, C_out*kH*kW, H*W)`` are summed into the output by
    ``fold``, whose blocks sit exactly where the transposed convolution puts them. Returns
    ``(B, C_out, H_out, W_out)`` with ``H_out = (H-1)*s - 2p + d*(kH-1) + op + 1``.
    """
    b, c_in, h, w = x.shape
    c_out = weight.shape[1]
    size = [
        (n - 1) * s - 2 * p + d * (k - 1) + op + 1
        for n, s, p, d, k, op in zip(
            (h, w), stride, padding, dilation, kernel_size, output_padding, strict=True
        )
    ]
    cols = torch.matmul(weight.reshape(c_in, -1).t(), x.reshape(b, c_in, h * w))
    y = F.fold(cols, size, kernel_size, dilation=dilation, padding=padding, stride=stride)
    return y if bias is None else y + bias.view(1, c_out, 1, 1)


def _phase_kernels(
    weight: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int]
) -> dict[tuple[int, int], torch.Tensor]:
    """Each phase's correlation kernel ``(C_out, C_in, taps_h, taps_w)``, keyed by first taps.

    The kernel of the phase whose flipped-kernel taps start at ``(fh, fw)`` is
    ``flip(weight)^T[:, :, fh::sH, fw::sW]``. When every phase has as many taps (kernel a
    multiple of the stride, as the UNet's 4 / 2) all of them come from one copy of the weight
    (one gather forward, one scatter backward: these layers' weights reach 8 M values); otherwise
    each is sliced separately.
    """
    (k_h, k_w), (s_h, s_w) = kernel_size, stride
    if k_h % s_h or k_w % s_w:
        w = weight.transpose(0, 1).flip((2, 3))  # (C_out, C_in, kH, kW) in correlation order
        return {(fh, fw): w[:, :, fh::s_h, fw::s_w] for fh in range(s_h) for fw in range(s_w)}
    t_h, t_w = k_h // s_h, k_w // s_w
    # flipped index j = s * i + u  ->  (.., i, u, i', u'); gather to (u, u', C_out, C_in, i, i')
    w = weight.flip((2, 3)).unflatten(3, (t_w, s_w)).unflatten(2, (t_h, s_h))
    w = w.permute(3, 5, 1, 0, 2, 4).contiguous()
    return {(fh, fw): w[fh, fw] for fh in range(s_h) for fw in range(s_w)}


def phase_conv_transpose2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> torch.Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride, padding, output_padding)`` by phases.

    ``x``: ``(B, C_in, H, W)``; ``weight``: ``(C_in, C_out, kH, kW)`` with ``kernel_size``
    ``(kH, kW)``; the output padding is
    implied (``kH + output_padding - 2*padding == stride``, checked by the caller). Returns
    ``(B, C_out, sH*H, sW*W)``. Each phase pads the input by exactly what its window needs
    (so the backward pass only slices and adds) and correlates it with its kernel taps.
    """
    # Python ints, not weight.shape: traced (ONNX) shapes are tensors
    k_h, k_w = kernel_size
    ph_h = _phases(k_h, stride[0], padding[0])
    ph_w = _phases(k_w, stride[1], padding[1])
    kernels = _phase_kernels(weight, kernel_size, stride)
    ys = []  # phase outputs (B, C_out, H, W), row phase major
    for first_h, taps_h, off_h in ph_h:
        for first_w, taps_w, off_w in ph_w:
            # outputs m = 0 .. H-1 read rows m + off_h .. m + off_h + taps_h - 1 (likewise
            # columns): zero-pad (or crop, where negative) the input to exactly that window
            pad = (-off_w, off_w + taps_w - 1, -off_h, off_h + taps_h - 1)
            xi = F.pad(x, pad) if any(pad) else x
            ys.append(F.conv2d(xi, kernels[first_h, first_w], bias))
    s_h, s_w = stride
    if torch.onnx.is_in_onnx_export() and s_h == s_w:
        # ONNX: DepthToSpace keeps the channel count known to shape inference (a Reshape with
        # dynamic sizes loses it, and InstanceNormalization's export needs it). Channels
        # (phase, c) -> (c, phase), then pixel_shuffle's c * s^2 + phase order.
        c_out = weight.shape[1]
        perm = torch.arange(s_h * s_w * c_out).view(s_h * s_w, c_out).t().reshape(-1)
        return F.pixel_shuffle(torch.cat(ys, dim=1).index_select(1, perm.to(x.device)), s_h)
    rows = [torch.stack(ys[r * s_w : (r + 1) * s_w], dim=-1) for r in range(s_h)]
    y = torch.stack(rows, dim=3)  # (B, C_out, H, sH, W, sW)
    return y.flatten(4, 5).flatten(2, 3)
