"""Convolutions by Winograd's minimal filtering algorithm ``F(m x m, r x r)`` (CPU training).

A stride-1 ``r x r`` convolution (cross-correlation, as ``F.conv2d``) computes each ``m x m``
block of outputs from an ``a x a`` input tile (``a = m + r - 1``) as

    Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A

(Lavin & Gray 2016): the element-wise product over ``a^2`` positions replaces ``m^2 r^2``
multiply-adds per channel pair, and summed over the input channels it becomes ``a^2``
independent matrix products, ``(C_out x C_in) @ (C_in x tiles)``. The two tiles the models use:
``F(4, 3)`` (6x6 tiles) does 4x fewer multiply-adds than the direct 3x3 convolution, ``F(3, 4)``
(6x6 tiles) 4x fewer than a 4x4 one (3.5x on the PatchGAN's 31x31 output, computed as 33x33
and cropped). The transforms ``B^T d B`` (input), ``A^T . A`` (output) and ``G g G^T``
(weights) are a few additions per value: memory-bound, small next to the products for wide
layers.

The matrices come from Toom-Cook interpolation at the points ``0, 1, -1, 2, -2, 1/2, ...`` and
infinity (exact rational arithmetic; :func:`winograd_matrices`), and
:class:`WinogradConvFunction` runs forward and backward as the same kind of batched products:
``dU = dM V^T`` (weight gradient, then ``G^T dU G``) and ``dV = U^T dM`` (input gradient, then
the transposed input transform). Small tiles (``F(2, 3)``, ``F(3, 2)``: points ``0, ±1``) are
about as accurate as the direct convolution in float32; the 6x6 tiles (points up to ``±2``) lose
a few bits: ~1e-5 relative at 256 channels against ~2e-6 for the direct convolution.

Where it pays on this project's 2-core AVX2 CPU (``benchmarks/winograd_layers.py``): the
ResNet generator's 256-channel 3x3 convolutions (``F(4, 3)``, ~1.9x faster forward and
backward) and the PatchGAN's stride-1 4x4 convolution (``F(3, 4)``, ~1.6x). The UNet's 4x4
stride-2 convolutions and transposed convolutions map onto 2x2 ones (the benchmark does it)
but lose there: too few channels on the large levels for the transforms to pay, too few
pixels on the small ones.

:class:`WinogradConv2d` is an ``nn.Conv2d`` (same parameters and state_dict) that takes this
path where it is faster on this CPU; in ONNX exports, on GPUs and on small layers it runs
torch's convolution. Whole training iterations: ``docs/benchmarks/train.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from fractions import Fraction
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

_POINTS = (
    Fraction(0),
    Fraction(1),
    Fraction(-1),
    Fraction(2),
    Fraction(-2),
    Fraction(1, 2),
    Fraction(-1, 2),
)


def _invert(matrix: list[list[Fraction]]) -> list[list[Fraction]]:
    """Gauss-Jordan inverse of a small non-singular matrix, in exact arithmetic."""
    n = len(matrix)
    aug = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if aug[r][col] != 0)
        aug[col], aug[pivot] = aug[pivot], aug[col]
        scale = aug[col][col]
        aug[col] = [v / scale for v in aug[col]]
        for r in range(n):
            if r != col and aug[r][col] != 0:
                factor = aug[r][col]
                aug[r] = [v - factor * p for v, p in zip(aug[r], aug[col], strict=True)]
    return [row[n:] for row in aug]


Matrix = tuple[tuple[float, ...], ...]
Rows = Sequence[Sequence[float]]


class _Transforms(NamedTuple):
    """The matrices of one ``F(m, r)`` as Python floats (no tensors: traceable, immutable)."""

    at: Matrix  #: ``A^T`` ``(m, a)``
    g: Matrix  #: ``G`` ``(a, r)``
    bt: Matrix  #: ``B^T`` ``(a, a)``
    gg: Matrix  #: ``kron(G, G)`` ``(a*a, r*r)``: the 2D weight transform


@functools.cache
def _transforms(m: int, r: int) -> _Transforms:
    """``F(m, r)``'s matrices (see :func:`winograd_matrices`), computed once per ``(m, r)``."""
    if m < 1 or r < 1:
        raise ValueError(f"Winograd F(m, r) needs m, r >= 1, got F({m}, {r})")
    a = m + r - 1
    if a - 1 > len(_POINTS):
        raise ValueError(f"F({m}, {r}) needs {a - 1} interpolation points, at most {len(_POINTS)}")
    points = _POINTS[: a - 1]

    def powers(p: Fraction, n: int) -> list[Fraction]:
        return [p**k for k in range(n)]

    def infinity(n: int) -> list[Fraction]:
        return [Fraction(0)] * (n - 1) + [Fraction(1)]

    # evaluation at the points and at infinity (the leading coefficient)
    evaluate = [powers(p, a) for p in points] + [infinity(a)]
    a_prime = [powers(p, m) for p in points] + [infinity(m)]
    g_rows = [powers(p, r) for p in points] + [infinity(r)]
    e_inv = _invert(evaluate)
    bt = [[e_inv[t][j] for t in range(a)] for j in range(a)]  # B^T = (E^-1)^T
    for j in range(a):
        lead = next(v for v in bt[j] if v != 0)
        bt[j] = [v / lead for v in bt[j]]
        g_rows[j] = [v * lead for v in g_rows[j]]
    at = [[a_prime[j][i] for j in range(a)] for i in range(m)]

    def floats(rows: list[list[Fraction]]) -> Matrix:
        return tuple(tuple(float(v) for v in row) for row in rows)

    gg = [[gi * gj for gi in row_i for gj in row_j] for row_i in g_rows for row_j in g_rows]
    return _Transforms(floats(at), floats(g_rows), floats(bt), floats(gg))


def winograd_matrices(m: int, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A^T, G, B^T)`` of ``F(m, r)`` as new float64 tensors: ``(m, a)``, ``(a, r)``, ``(a, a)``.

    For an input row ``d`` (``a = m + r - 1`` values) and filter ``g`` (``r`` values),
    ``A^T @ ((G @ g) * (B^T @ d))`` is the correlation ``y_i = sum_k d[i + k] g[k]``,
    ``i < m``. Built by Toom-Cook interpolation in exact rational arithmetic; each row of
    ``B^T`` is scaled so that its first non-zero entry is 1 (the scale moves into ``G``), which
    keeps the input transform to additions where possible. ``ValueError`` for ``m, r < 1`` or
    tiles that need more interpolation points than this module has (``m + r - 2 > 7``).
    """
    t = _transforms(m, r)
    return tuple(torch.tensor(x, dtype=torch.float64) for x in (t.at, t.g, t.bt))  # type: ignore[return-value]


def _combine(coefs: Sequence[float], parts: list[torch.Tensor], out: torch.Tensor) -> None:
    """``out = sum_i coefs[i] * parts[i]`` with as few passes over memory as possible."""
    terms = [(c, p) for c, p in zip(coefs, parts, strict=True) if c != 0.0]
    if not terms:
        out.zero_()
        return
    (c0, p0), rest = terms[0], terms[1:]
    if rest and c0 in (1.0, -1.0):
        c1, p1 = rest[0]
        if c0 == 1.0:
            torch.add(p0, p1, alpha=c1, out=out)
        elif c1 == 1.0:
            torch.sub(p1, p0, out=out)
        else:
            torch.add(p0, p1, alpha=-c1, out=out).neg_()
        rest = rest[1:]
    elif c0 == 1.0:
        out.copy_(p0)
    else:
        torch.mul(p0, c0, out=out)
    for c, p in rest:
        out.add_(p, alpha=c)


def _strided(x: torch.Tensor, dim: int, start: int, step: int, count: int) -> torch.Tensor:
    """``x`` indexed ``start, start + step, ..., start + (count-1)*step`` along ``dim`` (a view)."""
    index: list[slice] = [slice(None)] * x.dim()
    index[dim] = slice(start, start + step * (count - 1) + 1, step)
    return x[tuple(index)]


def _tile(x: torch.Tensor, bt: Rows, m: int, tiles: int, dim: int) -> torch.Tensor:
    """The input transform along ``dim``: a new leading axis of ``a`` transformed rows.

    ``out[j] = sum_i B^T[j, i] * x[..., i + m*t, ...]`` for tiles ``t < tiles``.
    """
    a = len(bt)
    parts = [_strided(x, dim, i, m, tiles) for i in range(a)]
    out = x.new_empty((a, *parts[0].shape))
    for j in range(a):
        _combine(bt[j], parts, out[j])
    return out


def _untile(dt: torch.Tensor, bt_t: Rows, m: int, size: int, dim: int) -> torch.Tensor:
    """The transpose of :func:`_tile` (``bt_t`` is ``B``): ``dt`` ``(a, ...)`` -> the gradient
    of ``x`` (``size`` along ``dim``)."""
    a = len(bt_t)
    tiles = dt.shape[dim + 1]
    shape = list(dt.shape[1:])
    shape[dim] = size
    dx = dt.new_zeros(shape)
    part = dt.new_empty(dt.shape[1:])
    for i in range(a):
        _combine(bt_t[i], list(dt), part)
        _strided(dx, dim, i, m, tiles).add_(part)
    return dx


class WinogradConvFunction(torch.autograd.Function):
    """``F.conv2d(x, weight, bias)`` (stride 1, no padding) by ``F(m, r)``, with its backward.

    ``x`` ``(N, C_in, H, W)`` with ``H - r + 1`` and ``W - r + 1`` multiples of ``m``;
    ``weight`` ``(C_out, C_in, r, r)``; returns ``(N, C_out, H - r + 1, W - r + 1)``. The
    backward recomputes the transformed input and weights rather than keeping them (they are
    ``a^2 / m^2`` times the output's and ``a^2 / r^2`` times the weight's size). Differentiable
    once: a double backward (e.g. a gradient penalty) raises; use ``conv_impl="native"`` there.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        m: int,
    ) -> torch.Tensor:
        n, _, h, w = x.shape
        c_out, _, r, _ = weight.shape
        t_h, t_w = (h - r + 1) // m, (w - r + 1) // m
        t = _transforms(m, r)
        a = m + r - 1
        v = _input_transform(x, t.bt, m, t_h, t_w)  # (a*a, C_in, N*t_h*t_w)
        u = _weight_transform(weight, t.gg)  # (a*a, C_out, C_in)
        prod = torch.bmm(u, v).view(a, a, c_out, n, t_h, t_w)
        out = _output_transform(prod, t.at, m)
        if bias is not None:
            out.add_(bias.view(1, -1, 1, 1))
        ctx.save_for_backward(x, weight)
        ctx.m = m  # type: ignore[attr-defined]
        ctx.has_bias = bias is not None  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        if torch.is_grad_enabled():  # backward(create_graph=True): a double backward follows
            raise RuntimeError(
                "Winograd convolution: differentiable once only (create_graph=True, e.g. a "
                "gradient penalty, needs the model built with conv_impl='native')"
            )
        x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        m: int = ctx.m  # type: ignore[attr-defined]
        n, c_in, h, w = x.shape
        c_out, _, r, _ = weight.shape
        t_h, t_w = (h - r + 1) // m, (w - r + 1) // m
        t = _transforms(m, r)
        a = m + r - 1
        at_t = list(zip(*t.at, strict=True))  # (a, m): the output transform's transpose
        bt_t = list(zip(*t.bt, strict=True))
        # grad (N, C_out, m*t_h, m*t_w) -> (m, m, C_out, N, t_h, t_w) views of its blocks
        gv = grad.contiguous().view(n, c_out, t_h, m, t_w, m).permute(3, 5, 1, 0, 2, 4)
        half = grad.new_empty(m, a, c_out, n, t_h, t_w)
        for p in range(m):
            for j in range(a):
                _combine(at_t[j], list(gv[p]), half[p, j])
        dprod = grad.new_empty(a, a, c_out, n, t_h, t_w)
        for i in range(a):
            _combine(at_t[i], list(half), dprod[i])
        dprod = dprod.view(a * a, c_out, n * t_h * t_w)
        dx = dw = db = None
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        if needs[1]:
            v = _input_transform(x, t.bt, m, t_h, t_w)
            du = torch.bmm(dprod, v.transpose(1, 2)).view(a * a, c_out * c_in)
            gg = torch.tensor(t.gg, dtype=grad.dtype)  # (a*a, r*r)
            dw = (gg.t() @ du).t().reshape(c_out, c_in, r, r)
        if needs[0]:
            u = _weight_transform(weight, t.gg)
            dv = torch.bmm(u.transpose(1, 2), dprod).view(a, a, c_in, n, t_h, t_w)
            rows = _untile(dv.transpose(0, 1), bt_t, m, w, dim=4)  # (a, C_in, N, t_h, W)
            dx = _untile(rows, bt_t, m, h, dim=2).transpose(0, 1)  # (N, C_in, H, W)
        if ctx.has_bias and needs[2]:  # type: ignore[attr-defined]
            db = grad.sum(dim=(0, 2, 3))
        return dx, dw, db, None


def _input_transform(x: torch.Tensor, bt: Rows, m: int, t_h: int, t_w: int) -> torch.Tensor:
    """``B^T d B`` of every tile: ``(N, C, H, W)`` -> ``(a*a, C, N*t_h*t_w)``."""
    a = len(bt)
    n, c = x.shape[:2]
    rows = _tile(x.transpose(0, 1), bt, m, t_h, dim=2)  # (a_h, C, N, t_h, W)
    parts = [_strided(rows, 4, i, m, t_w) for i in range(a)]  # (a_h, C, N, t_h, t_w) each
    v = x.new_empty(a, a, c, n, t_h, t_w)
    for j in range(a):
        _combine(bt[j], parts, v[:, j])
    return v.view(a * a, c, n * t_h * t_w)


def _weight_transform(weight: torch.Tensor, kron_g: Matrix) -> torch.Tensor:
    """``G g G^T`` per channel pair: ``(C_out, C_in, r, r)`` -> ``(a*a, C_out, C_in)``."""
    c_out, c_in, r, _ = weight.shape
    gg = torch.tensor(kron_g, dtype=weight.dtype)  # (a*a, r*r)
    return (gg @ weight.reshape(c_out * c_in, r * r).t()).view(-1, c_out, c_in)


def _output_transform(prod: torch.Tensor, at: Rows, m: int) -> torch.Tensor:
    """``A^T M A`` of every tile: ``(a, a, C_out, N, t_h, t_w)`` -> ``(N, C_out, H, W)``."""
    a, _, c_out, n, t_h, t_w = prod.shape
    half = prod.new_empty(m, a, c_out, n, t_h, t_w)
    for p in range(m):
        _combine(at[p], list(prod), half[p])
    out = prod.new_empty(n, c_out, t_h, m, t_w, m)
    blocks = out.permute(3, 5, 1, 0, 2, 4)  # (m, m, C_out, N, t_h, t_w) views
    for p in range(m):
        for q in range(m):
            _combine(at[q], list(half[p].unbind(0)), blocks[p, q])
    return out.view(n, c_out, t_h * m, t_w * m)


def winograd_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    m: int,
    padding: tuple[int, int] = (0, 0),
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` (stride 1, square kernel) by ``F(m, r)``.

    ``x`` ``(N, C_in, H, W)``, ``weight`` ``(C_out, C_in, r, r)``, ``padding`` ``(pH, pW)``
    zeros; returns ``(N, C_out, H + 2 pH - r + 1, W + 2 pW - r + 1)``, contiguous. Output sizes
    that are not multiples of ``m`` are computed on a larger zero-padded input (one pad for
    both) and cropped.
    """
    r = weight.shape[-1]
    p_h, p_w = padding
    h_out, w_out = x.shape[-2] + 2 * p_h - r + 1, x.shape[-1] + 2 * p_w - r + 1
    extra_h, extra_w = -h_out % m, -w_out % m
    if p_h or p_w or extra_h or extra_w:
        x = F.pad(x, (p_w, p_w + extra_w, p_h, p_h + extra_h))
    out = WinogradConvFunction.apply(x, weight, bias, m)
    if extra_h or extra_w:
        out = out[:, :, :h_out, :w_out].contiguous()
    return out


ConvImpl = Literal["native", "auto"]

#: ``conv_impl="auto"``: the Winograd tile ``m`` per kernel size (``F(4, 3)``, ``F(3, 4)``)
AUTO_TILE = {3: 4, 4: 3}
#: ``conv_impl="auto"``: the smallest channel counts (in and out) that take the Winograd path
AUTO_MIN_CHANNELS = 128
#: ``conv_impl="auto"``: the smallest output (pixels per image) that takes the Winograd path
AUTO_MIN_PIXELS = 16 * 16


class WinogradConv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` whose CPU forward and backward run :func:`winograd_conv2d`.

    Same parameters, initialization and ``state_dict`` keys as ``nn.Conv2d``, so checkpoints
    of either load into the other; the same math up to float rounding (about 1e-5 relative in
    float32 for ``F(4, 3)`` and ``F(3, 4)`` at 256 channels, against ~2e-6 for the direct
    convolution). The Winograd path covers stride-1 convolutions with square ``r x r`` kernels,
    zero padding given as numbers, no dilation or groups, at least ``min_channels`` input and
    output channels and ``min_pixels`` output pixels, batched 4D float32/float64 input on the
    CPU, outside autocast, ONNX export, tracing and ``torch.compile``/``torch.export``, and
    only for a single backward (no gradient penalty). Everything else runs ``nn.Conv2d``
    (ONNX Runtime, TensorRT and cuDNN choose their own algorithms). The geometry is fixed at
    construction, as the attributes of ``nn.Conv2d`` are in practice; the output keeps a
    channels_last input's memory format.

    ``tile``: ``m`` of ``F(m, r)`` (``None``: :data:`AUTO_TILE`, measured fastest on this
    project's 2-core AVX2 CPU, ``benchmarks/winograd_layers.py``; kernel sizes without an
    entry run ``nn.Conv2d``).
    """

    def __init__(
        self,
        *args: object,
        tile: int | None = None,
        min_channels: int = AUTO_MIN_CHANNELS,
        min_pixels: int = AUTO_MIN_PIXELS,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        k_h, k_w = self.kernel_size
        self.tile = AUTO_TILE.get(k_h) if tile is None else tile
        if self.tile is not None:
            _transforms(self.tile, k_h)  # ValueError now for an impossible tile
        self.min_channels = min_channels
        self.min_pixels = min_pixels
        self._winograd_ok = (
            self.tile is not None
            and k_h == k_w
            and tuple(self.stride) == (1, 1)
            and tuple(self.dilation) == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)  # not "same"/"valid" strings
            and min(self.in_channels, self.out_channels) >= min_channels
        )

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", tile={self.tile}, min_channels={self.min_channels}, min_pixels={self.min_pixels}"
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self._winograd_ok and self._use_winograd(input)):
            return super().forward(input)
        out = winograd_conv2d(input, self.weight, self.bias, self.tile, self.padding)  # type: ignore[arg-type]
        if not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _use_winograd(self, x: torch.Tensor) -> bool:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            return False  # nn.Conv2d handles unbatched input and explains a wrong channel count
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            return False
        if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.jit.is_scripting():
            return False
        if torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu"):
            return False
        r = self.kernel_size[0]
        h = x.shape[-2] + 2 * self.padding[0] - r + 1  # type: ignore[index]
        w = x.shape[-1] + 2 * self.padding[1] - r + 1  # type: ignore[index]
        return h * w >= self.min_pixels


def conv2d_layer(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    impl: ConvImpl = "auto",
    **kwargs: object,
) -> nn.Conv2d:
    """An ``nn.Conv2d`` (``impl="native"``) or a :class:`WinogradConv2d` (``"auto"``)."""
    if impl == "native":
        return nn.Conv2d(in_channels, out_channels, kernel_size, **kwargs)  # type: ignore[arg-type]
    if impl == "auto":
        return WinogradConv2d(in_channels, out_channels, kernel_size, **kwargs)
    raise ValueError(f"conv_impl must be 'native' or 'auto', got {impl!r}")
