"""The ResNet generator of CycleGAN (Johnson et al. 2016; Zhu et al. 2017).

A 7x7 stem, ``n_downsampling`` stride-2 3x3 convolutions, ``n_blocks`` residual blocks at the
lowest resolution (reflection padding), ``n_downsampling`` upsampling steps and a 7x7 head.
``n_blocks=9, base_width=64`` is the classic ``resnet_9blocks`` (11.4 M parameters),
``n_blocks=6`` ``resnet_6blocks``. Tile height and width must be multiples of
``2**n_downsampling`` (``size_multiple``, 4 by default).

Colour heads (not in the classic model; they need ``residual=True``) replace the upsampling
path and the 7x7 head: the residual blocks' features at the lowest resolution feed a 1x1
convolution, and the output keeps every detail of the input, only its colours change (a
stain-transfer generator that recolours but cannot paint texture, and is much cheaper than
the full head):

- ``head="shift"``: a per-channel offset field ``b``, bilinearly upsampled by
  ``2**n_downsampling``: ``y = x + tanh(b)``;
- ``head="affine"``: a gain and an offset field: ``y = x + tanh(a * x + b)``;
- ``head="global"``: one gain and one offset per channel and image (the 1x1 convolution's
  spatial mean plus a linear function of the input's mean colour, which the instance norms
  remove from the features): ``y = x + tanh(a * x + b)`` with ``a``, ``b`` constant over the
  image, i.e. a learnt, image-dependent per-channel colour curve.

All three start as the identity (zeroed last layers).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from stainbench.models.layers import (
    NormName,
    TransposeImpl,
    UpsampleName,
    conv_bias,
    final_activation,
    init_weights,
    norm_layer,
    upsample_conv,
    zero_last_conv,
)
from stainbench.models.registry import register_model
from stainbench.models.thin_conv import ThinConv2d
from stainbench.models.winograd import ConvImpl, conv2d_layer

HeadName = Literal["full", "shift", "affine", "global"]


class ResidualBlock(nn.Module):
    """``x + conv(relu(norm(conv(pad(x)))))`` with reflection padding, channels unchanged.

    ``conv_impl="auto"`` computes the 3x3 convolutions by Winograd's ``F(4, 3)`` on the CPU
    where that is faster (:class:`~stainbench.models.winograd.WinogradConv2d`; same math).
    """

    def __init__(
        self, channels: int, norm: NormName, dropout: float, conv_impl: ConvImpl = "auto"
    ) -> None:
        super().__init__()
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            conv2d_layer(channels, channels, 3, impl=conv_impl, bias=bias),
            norm_layer(norm, channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [
            nn.ReflectionPad2d(1),
            conv2d_layer(channels, channels, 3, impl=conv_impl, bias=bias),
            norm_layer(norm, channels),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """ResNet generator: ``(B, in_channels, H, W)`` float32 -> ``(B, out_channels, H, W)``.

    ``residual=True`` (not in the classic model) returns ``x + f(x)``, see ``UNet``.
    ``transpose_impl`` only picks how the transposed convolutions are computed, ``conv_impl``
    how the residual blocks' (``"auto"``: Winograd on the CPU where faster; ``"native"``:
    ``nn.Conv2d``); both keep the math and the state_dict.
    ``head``: ``"full"`` (the classic decoder) or a colour head, ``"shift"``, ``"affine"``
    or ``"global"`` (module docstring; ``upsample``/``transpose_impl``/``final`` do not
    apply to them).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        n_blocks: int = 9,
        base_width: int = 64,
        n_downsampling: int = 2,
        norm: NormName = "instance",
        dropout: float = 0.0,
        upsample: UpsampleName = "transpose",
        transpose_impl: TransposeImpl = "auto",
        final: Literal["tanh", "none"] = "tanh",
        residual: bool = False,
        head: HeadName = "full",
        conv_impl: ConvImpl = "auto",
    ) -> None:
        super().__init__()
        if n_blocks < 0 or n_downsampling < 0 or base_width < 1:
            raise ValueError("n_blocks and n_downsampling must be >= 0, base_width >= 1")
        if residual and in_channels != out_channels:
            raise ValueError("residual needs in_channels == out_channels")
        if head not in ("full", "shift", "affine", "global"):
            raise ValueError(f"head must be 'full', 'shift', 'affine' or 'global', got {head!r}")
        if head != "full" and not residual:
            raise ValueError(f"head {head!r} adds a colour field to the input: needs residual=True")
        self.size_multiple: int = 2**n_downsampling
        self.residual = residual
        self.head = head
        self.field_channels = {"full": 0, "shift": 1, "affine": 2, "global": 2}[head]
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, base_width, 7, bias=bias),
            norm_layer(norm, base_width),
            nn.ReLU(inplace=True),
        ]
        width = base_width
        for _ in range(n_downsampling):
            layers += [
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=bias),
                norm_layer(norm, 2 * width),
                nn.ReLU(inplace=True),
            ]
            width *= 2
        layers += [ResidualBlock(width, norm, dropout, conv_impl) for _ in range(n_blocks)]
        if self.field_channels:
            layers.append(nn.Conv2d(width, self.field_channels * out_channels, 1))
            self.model = nn.Sequential(*layers)
            if head == "global":  # the input's mean colour, which the instance norms remove
                self.colour = nn.Conv2d(in_channels, 2 * out_channels, 1)
            init_weights(self)
            zero_last_conv(self)  # start as the identity
            if head == "global":
                zero_last_conv(self.model)
            return
        for _ in range(n_downsampling):
            layers += [
                upsample_conv(
                    width,
                    width // 2,
                    mode=upsample,
                    kernel_size=3,
                    bias=bias,
                    transpose_impl=transpose_impl,
                ),
                norm_layer(norm, width // 2),
                nn.ReLU(inplace=True),
            ]
            width //= 2
        layers += [
            nn.ReflectionPad2d(3),
            # few output channels: computed as row convolutions + a column sum (same math,
            # 2.5-3x faster forward on CPU; see stainbench/models/thin_conv.py)
            ThinConv2d(width, out_channels, 7),
            final_activation(final),
        ]
        self.model = nn.Sequential(*layers)
        init_weights(self)
        if residual:  # start as the identity: the last convolution's weights are zero
            zero_last_conv(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.head == "global":
            out = out.mean(dim=(2, 3), keepdim=True) + self.colour(x.mean(dim=(2, 3), keepdim=True))
        if self.field_channels:
            if self.size_multiple > 1 and self.head != "global":
                out = F.interpolate(
                    out, scale_factor=self.size_multiple, mode="bilinear", align_corners=False
                )
            if self.field_channels == 2:
                gain, offset = out.chunk(2, dim=1)
                return x + torch.tanh(gain * x + offset)
            return x + torch.tanh(out)
        return x + out if self.residual else out


@register_model(
    "resnet",
    role="generator",
    small_kwargs={"n_blocks": 1, "base_width": 4},
)
def resnet(
    in_channels: int = 3,
    out_channels: int = 3,
    n_blocks: int = 9,
    base_width: int = 64,
    n_downsampling: int = 2,
    norm: NormName = "instance",
    dropout: float = 0.0,
    upsample: UpsampleName = "transpose",
    transpose_impl: TransposeImpl = "auto",
    final: Literal["tanh", "none"] = "tanh",
    residual: bool = False,
    head: HeadName = "full",
    conv_impl: ConvImpl = "auto",
) -> ResnetGenerator:
    """ResNet generator; ``n_blocks=9`` is resnet_9blocks, ``n_blocks=6`` resnet_6blocks."""
    return ResnetGenerator(
        in_channels=in_channels,
        out_channels=out_channels,
        n_blocks=n_blocks,
        base_width=base_width,
        n_downsampling=n_downsampling,
        norm=norm,
        dropout=dropout,
        upsample=upsample,
        transpose_impl=transpose_impl,
        final=final,
        residual=residual,
        head=head,
        conv_impl=conv_impl,
    )
