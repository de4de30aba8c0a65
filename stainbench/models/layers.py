"""Building blocks shared by the architectures.

Normalization defaults to instance norm without running statistics, so that in eval mode
one tile's output never depends on the other tiles in its batch (Triton batches requests).
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from stainbench.models.phase_transpose import PhaseConvTranspose2d

NormName = Literal["instance", "batch", "none"]
UpsampleName = Literal["transpose", "resize"]
TransposeImpl = Literal["native", "phase", "auto"]

#: ``transpose_impl="auto"``: in ONNX graphs, inputs up to this many pixels (16x16) use phases
AUTO_PHASE_MAX_PIXELS = 256
#: ``transpose_impl="auto"``: in PyTorch, inputs up to this many pixels (8x8) use matmul + col2im
AUTO_GEMM_MAX_PIXELS = 64


def norm_layer(kind: NormName, channels: int) -> nn.Module:
    """A 2D normalization layer.

    ``"instance"``: per-sample, per-channel statistics, no affine parameters and no running
    statistics (the classic pix2pix/CycleGAN choice; batch-independent). ``"batch"``: batch
    norm (train-mode outputs depend on the batch; eval mode uses running statistics).
    ``"none"``: identity.
    """
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'instance', 'batch' or 'none', got {kind!r}")


def conv_bias(kind: NormName) -> bool:
    """Convolutions followed by batch norm need no bias (the norm's shift replaces it)."""
    return kind != "batch"


def upsample_conv(
    in_ch: int,
    out_ch: int,
    *,
    mode: UpsampleName,
    kernel_size: int,
    bias: bool,
    transpose_impl: TransposeImpl = "auto",
) -> nn.Module:
    """Double the spatial size and map ``in_ch`` -> ``out_ch`` channels.

    ``"transpose"``: the classic stride-2 transposed convolution (``kernel_size`` 4 with
    padding 1, or 3 with padding 1 and output padding 1). ``"resize"``: nearest-neighbour
    upsampling then a 3x3 convolution (no checkerboard artefacts; on CPU torch runs plain
    convolutions faster than transposed ones).

    ``transpose_impl`` only chooses how ``"transpose"`` is computed, not what (same parameters
    and state_dict keys, equal outputs up to float rounding): ``"native"`` runs
    ``nn.ConvTranspose2d``; ``"phase"`` one regular convolution per output phase
    (:class:`~stainbench.models.phase_transpose.PhaseConvTranspose2d`) everywhere; ``"auto"``
    what measured fastest on this CPU: in PyTorch (training and eager inference) a matrix
    product + col2im for inputs of at most ``AUTO_GEMM_MAX_PIXELS`` pixels and torch's
    transposed convolution for larger ones; in exported ONNX graphs phase convolutions for
    inputs of at most ``AUTO_PHASE_MAX_PIXELS`` pixels (ONNX Runtime's ConvTranspose is slow on
    them) and ConvTranspose for larger ones.
    """
    if mode == "transpose":
        if transpose_impl == "native":
            cls: type[nn.ConvTranspose2d] = nn.ConvTranspose2d
            opts: dict = {}
        elif transpose_impl == "phase":
            cls, opts = PhaseConvTranspose2d, {}
        elif transpose_impl == "auto":
            cls = PhaseConvTranspose2d
            opts = {
                "max_pixels": AUTO_PHASE_MAX_PIXELS,
                "only_in_export": True,
                "gemm_max_pixels": AUTO_GEMM_MAX_PIXELS,
            }
        else:
            raise ValueError(
                f"transpose_impl must be 'native', 'phase' or 'auto', got {transpose_impl!r}"
            )
        if kernel_size == 4:
            return cls(in_ch, out_ch, 4, stride=2, padding=1, bias=bias, **opts)
        if kernel_size == 3:
            return cls(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1, bias=bias, **opts)
        raise ValueError(f"transposed upsampling supports kernel 3 or 4, got {kernel_size}")
    if mode == "resize":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias),
        )
    raise ValueError(f"upsample must be 'transpose' or 'resize', got {mode!r}")


def final_activation(kind: Literal["tanh", "none"]) -> nn.Module:
    """``"tanh"`` bounds outputs to [-1, 1] (for ``range`` normalization); ``"none"``."""
    if kind == "tanh":
        return nn.Tanh()
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"final activation must be 'tanh' or 'none', got {kind!r}")


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """The classic initialization: conv weights ~ N(0, gain), biases 0; norm scales ~ N(1, gain).

    Uses torch's global RNG: seed it (``torch.manual_seed``) before building a model.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


def zero_last_conv(module: nn.Module) -> None:
    """Zero the weights and bias of the last (transposed) convolution inside ``module``."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    if not convs:
        raise ValueError("no convolution to zero")
    nn.init.zeros_(convs[-1].weight)
    if convs[-1].bias is not None:
        nn.init.zeros_(convs[-1].bias)
