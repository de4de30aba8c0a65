"""The UNet generator (Ronneberger et al. 2015; the pix2pix "unet_256"/"unet_128" variant).

``depth`` stride-2 4x4 convolutions halve the tile ``depth`` times, then ``depth`` upsampling
steps restore it, with skip connections between mirrored levels. Widths are
``base_width * min(2**level, max_width_mult)``. With ``depth=8, base_width=64`` (and
``norm="instance"``) this is the classic ``unet_256`` (54.4 M parameters); ``depth=7`` is
``unet_128``. Tile height and width must be multiples of ``2**depth`` (``size_multiple``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

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


class UNet(nn.Module):
    """UNet generator: ``(B, in_channels, H, W)`` float32 -> ``(B, out_channels, H, W)``.

    Down level ``i`` (0-based): LeakyReLU(0.2) (not on level 0), 4x4 stride-2 conv, norm (not
    on level 0 nor on the innermost level). Up level ``i``: ReLU, upsample-conv, norm (not on
    the outermost level), dropout (``dropout`` > 0, on the three innermost levels below the
    bottleneck as in pix2pix); the outermost ends with ``final_activation``.
    ``transpose_impl`` (``"auto"``, ``"native"``, ``"phase"``) only picks how the transposed
    convolutions are computed (:func:`stainbench.models.layers.upsample_conv`): same
    parameters, same math.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        depth: int = 8,
        base_width: int = 64,
        max_width_mult: int = 8,
        norm: NormName = "instance",
        dropout: float = 0.0,
        upsample: UpsampleName = "transpose",
        transpose_impl: TransposeImpl = "auto",
        final: Literal["tanh", "none"] = "tanh",
        residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if base_width < 1 or max_width_mult < 1:
            raise ValueError("base_width and max_width_mult must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if residual and in_channels != out_channels:
            raise ValueError("residual needs in_channels == out_channels")
        self.size_multiple: int = 2**depth
        self.depth = depth
        self.residual = residual
        widths = [base_width * min(2**i, max_width_mult) for i in range(depth)]
        bias = conv_bias(norm)

        self.down = nn.ModuleList()
        prev = in_channels
        for i, w in enumerate(widths):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(nn.LeakyReLU(0.2, inplace=True))
            innermost = i == depth - 1
            layers.append(nn.Conv2d(prev, w, 4, stride=2, padding=1, bias=bias or innermost))
            if 0 < i < depth - 1:
                layers.append(norm_layer(norm, w))
            self.down.append(nn.Sequential(*layers))
            prev = w

        # up[j] produces level (depth-1-j)'s output; inputs are concatenated skips except innermost
        self.up = nn.ModuleList()
        for j in range(depth):
            i = depth - 1 - j  # the level this step undoes
            in_ch = widths[i] if j == 0 else 2 * widths[i]
            outermost = i == 0
            out_ch = out_channels if outermost else widths[i - 1]
            layers = [nn.ReLU(inplace=True)]
            layers.append(
                upsample_conv(
                    in_ch,
                    out_ch,
                    mode=upsample,
                    kernel_size=4,
                    bias=bias or outermost,
                    transpose_impl=transpose_impl,
                )
            )
            if outermost:
                layers.append(final_activation(final))
            else:
                layers.append(norm_layer(norm, out_ch))
                if dropout > 0 and 1 <= j <= 3 and depth - 1 - j >= 1:
                    layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        init_weights(self)
        if residual:  # start as the identity: the last convolution's weights are zero
            zero_last_conv(self.up[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        h = x
        for block in self.down:
            h = block(h)
            skips.append(h)
        h = self.up[0](skips[-1])
        for j in range(1, self.depth):
            h = self.up[j](torch.cat([skips[self.depth - 1 - j], h], dim=1))
        return x + h if self.residual else h


@register_model(
    "unet",
    role="generator",
    small_kwargs={"depth": 3, "base_width": 4, "max_width_mult": 4},
)
def unet(
    in_channels: int = 3,
    out_channels: int = 3,
    depth: int = 8,
    base_width: int = 64,
    max_width_mult: int = 8,
    norm: NormName = "instance",
    dropout: float = 0.0,
    upsample: UpsampleName = "transpose",
    transpose_impl: TransposeImpl = "auto",
    final: Literal["tanh", "none"] = "tanh",
    residual: bool = False,
) -> UNet:
    """UNet generator; ``depth=8, base_width=64`` is unet_256, ``depth=7`` unet_128."""
    return UNet(
        in_channels=in_channels,
        out_channels=out_channels,
        depth=depth,
        base_width=base_width,
        max_width_mult=max_width_mult,
        norm=norm,
        dropout=dropout,
        upsample=upsample,
        transpose_impl=transpose_impl,
        final=final,
        residual=residual,
    )
