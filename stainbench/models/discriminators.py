"""The PatchGAN discriminator of pix2pix/CycleGAN (Isola et al. 2017).

A fully convolutional classifier whose every output logit judges one overlapping patch of the
input: ``n_layers=3`` (the default) gives each logit a 70x70-pixel receptive field.
"""

from __future__ import annotations

from torch import Tensor, nn

from stainbench.models.layers import NormName, conv_bias, init_weights, norm_layer
from stainbench.models.registry import register_model
from stainbench.models.winograd import ConvImpl, conv2d_layer


def patchgan_receptive_field(n_layers: int) -> int:
    """Receptive field (pixels) of one output logit: 4x4 kernels, ``n_layers`` with stride 2
    then two with stride 1. ``n_layers=3`` -> 70, 1 -> 16 (a "PixelGAN"-like small patch)."""
    rf = 1
    for stride in reversed([2] * n_layers + [1, 1]):
        rf = rf * stride + (4 - stride)
    return rf


class PatchGAN(nn.Module):
    """``(B, in_channels, H, W)`` -> ``(B, 1, H', W')`` logits (no sigmoid; the loss applies it).

    ``H' = H / 2**n_layers - 2`` for H a multiple of ``2**n_layers``. For the conditional
    (pix2pix) discriminator ``in_channels`` is input + output channels (6 for RGB).
    ``conv_impl="auto"`` computes the wide stride-1 4x4 convolution by Winograd's ``F(3, 4)``
    on the CPU where that is faster (same math and state_dict; ``"native"``: ``nn.Conv2d``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_width: int = 64,
        n_layers: int = 3,
        norm: NormName = "instance",
        conv_impl: ConvImpl = "auto",
    ) -> None:
        super().__init__()
        if n_layers < 1 or base_width < 1:
            raise ValueError("n_layers and base_width must be >= 1")
        self.receptive_field: int = patchgan_receptive_field(n_layers)
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = base_width
        for n in range(1, n_layers + 1):
            out = base_width * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            conv = (
                conv2d_layer(width, out, 4, impl=conv_impl, padding=1, bias=bias)
                if stride == 1  # Winograd F(3, 4) on the CPU where faster (same math)
                else nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=bias)
            )
            layers += [
                conv,
                norm_layer(norm, out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


@register_model(
    "patchgan",
    role="discriminator",
    small_kwargs={"base_width": 4, "n_layers": 2},
)
def patchgan(
    in_channels: int = 3,
    base_width: int = 64,
    n_layers: int = 3,
    norm: NormName = "instance",
    conv_impl: ConvImpl = "auto",
) -> PatchGAN:
    """PatchGAN discriminator; ``n_layers=3`` judges 70x70 patches."""
    return PatchGAN(
        in_channels=in_channels,
        base_width=base_width,
        n_layers=n_layers,
        norm=norm,
        conv_impl=conv_impl,
    )
