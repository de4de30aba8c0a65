"""Patch sampling: crop position, horizontal flip and 90-degree rotation, drawn once and
applied identically to both sides of a pair.

The eight combinations of ``flip`` and ``rot90`` (k = 0..3) are the whole dihedral group, so
a vertical flip needs no separate flag. The transform is "flip the x axis, then rotate by
k x 90 degrees in the (y, x) plane" (``numpy.rot90(..., k, axes=(y, x))``); its integer
``code`` is ``rot90 + 4 * flip`` (0 = identity).

Tile datasets do not apply it themselves: an item carries the channels-last crop as stored
and the code, and :func:`augment_normalize` applies the transform, the move of the channels
to the front and the normalization to a whole batch in one pass over the pixels
(:func:`apply_params` is the per-patch numpy reference it is tested against).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stainbench.errors import DataError

#: Number of transform codes (the dihedral group of the square).
N_CODES = 8


@dataclass(frozen=True)
class PatchParams:
    """Where to crop (top-left ``y``, ``x``) and how to transform one patch."""

    y: int
    x: int
    flip: bool = False
    rot90: int = 0

    @property
    def code(self) -> int:
        """The transform as one integer 0..7: ``rot90 + 4 * flip``."""
        return int(self.rot90) % 4 + 4 * int(bool(self.flip))


def sample_params(
    rng: np.random.Generator | None, height: int, width: int, patch: int
) -> PatchParams:
    """Random crop + flip + rotation from ``rng``; ``rng=None``: centred crop, no transform.

    ``height``/``width``: tile size in pixels; ``patch``: square patch side, <= both.
    """
    if patch > height or patch > width:
        raise DataError(f"patch size {patch} is larger than the tiles ({height}x{width})")
    if rng is None:
        return PatchParams((height - patch) // 2, (width - patch) // 2)
    y = int(rng.integers(0, height - patch + 1))
    x = int(rng.integers(0, width - patch + 1))
    return PatchParams(y, x, bool(rng.integers(0, 2)), int(rng.integers(0, 4)))


def crop(tile: np.ndarray, params: PatchParams, patch: int) -> np.ndarray:
    """The untransformed ``(..., P, P, C)`` crop of a channels-last tile, as a view."""
    return tile[..., params.y : params.y + patch, params.x : params.x + patch, :]


def apply_params(patch: np.ndarray, params: PatchParams) -> np.ndarray:
    """Flip/rotate an already cropped patch in its (y, x) plane and move channels first.

    ``(P, P, C)`` gives a contiguous ``(C, P, P)``; ``(D, P, P, C)`` gives ``(C, D, P, P)``.
    """
    out = patch
    if params.flip:
        out = out[..., ::-1, :]
    if params.rot90:
        out = np.rot90(out, k=params.rot90, axes=(-3, -2))
    return np.ascontiguousarray(np.moveaxis(out, -1, 0))


def source_affine(code: int, size: int, row_stride: int, pixel_stride: int) -> tuple[int, int, int]:
    """Where output pixel ``(i, j)`` of a transformed ``size`` x ``size`` patch comes from.

    Returns ``(base, si, sj)``: the source element of output ``(c, i, j)`` is
    ``base + i * si + j * sj + c`` for a channels-last source with the given strides (in
    elements). ``code`` as :attr:`PatchParams.code`.
    """
    flip, k = code >= 4, code % 4
    last = size - 1
    # source (row a, column b) of the flipped patch as a0 + ai*i + aj*j, b0 + bi*i + bj*j
    a0, ai, aj, b0, bi, bj = (
        (0, 1, 0, 0, 0, 1),  # identity
        (0, 0, 1, last, -1, 0),  # rot90 k=1: r[i, j] = f[j, P-1-i]
        (last, -1, 0, last, 0, -1),  # k=2: r[i, j] = f[P-1-i, P-1-j]
        (last, 0, -1, 0, 1, 0),  # k=3: r[i, j] = f[P-1-j, i]
    )[k]
    if flip:  # f[a, b] = patch[a, P-1-b]
        b0, bi, bj = last - b0, -bi, -bj
    return (
        a0 * row_stride + b0 * pixel_stride,
        ai * row_stride + bi * pixel_stride,
        aj * row_stride + bj * pixel_stride,
    )


def augment_normalize(raw: Any, codes: Any, params: Any) -> Any:
    """Transform, move channels first and normalize a batch of channels-last patches.

    ``raw``: integer tensor ``(B, P, P, C)`` (uint8/uint16, the stored crops); ``codes``:
    ``(B,)`` transform codes 0..7; ``params``: float32 ``(B, 2, C)`` offsets and scales.
    Returns a new float32 ``(B, C, P, P)`` tensor on ``raw``'s device:
    ``(apply(raw) - offset) / scale``, bit-identical to :func:`apply_params` followed by
    :meth:`~stainbench.data.transforms.Normalization.forward` on each patch.

    uint8 batches on the CPU go through one compiled pass (numba) that reads each source pixel
    once and looks its normalized value up in a 256-entry table per patch and channel (the
    table holds the same float32 ``(v - offset) / scale`` the arithmetic gives); otherwise
    (uint16, GPU tensors, numba missing) the batch is grouped by code and transformed with
    torch operations, then normalized with a float32 subtraction and division.
    """
    import torch

    if raw.ndim != 4 or raw.shape[1] != raw.shape[2]:
        raise DataError(f"patches must be (B, P, P, C) with square P x P, got {tuple(raw.shape)}")
    b, p, _, c = (int(s) for s in raw.shape)
    if tuple(codes.shape) != (b,) or tuple(params.shape) != (b, 2, c):
        raise DataError(
            f"transform codes {tuple(codes.shape)} / normalization parameters "
            f"{tuple(params.shape)} do not fit patches {tuple(raw.shape)} "
            f"(expected ({b},) and ({b}, 2, {c}))"
        )
    codes_np = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes, dtype=np.int64)
    if b and (int(codes_np.min()) < 0 or int(codes_np.max()) >= N_CODES):
        raise DataError(f"transform codes must be 0..{N_CODES - 1}, got {codes_np.tolist()}")
    if b == 0:
        return torch.empty((0, c, p, p), dtype=torch.float32, device=raw.device)
    kernel = _kernel() if raw.device.type == "cpu" and raw.dtype == torch.uint8 else None
    if kernel is not None:
        src = raw.contiguous().numpy().reshape(b, p * p * c)
        affine = np.array([source_affine(int(k), p, p * c, c) for k in codes_np], np.int64)
        par = np.ascontiguousarray(params.cpu().numpy() if hasattr(params, "cpu") else params)
        out = torch.empty((b, c, p, p), dtype=torch.float32)
        kernel(src, affine, par.astype(np.float32, copy=False), out.numpy())
        return out
    return _torch_path(raw, codes_np, params)


def _torch_path(raw: Any, codes: np.ndarray, params: Any) -> Any:
    """Grouped by code: torch flips/rotations, then float32 ``(x - offset) / scale``."""
    import torch

    b, p, _, c = (int(s) for s in raw.shape)
    par = torch.as_tensor(params, dtype=torch.float32).to(raw.device)
    out = torch.empty((b, c, p, p), dtype=torch.float32, device=raw.device)
    for code in np.unique(codes):
        rows = np.flatnonzero(codes == code)
        idx = torch.as_tensor(rows, device=raw.device)
        x = raw.index_select(0, idx).permute(0, 3, 1, 2)  # (n, C, P, P) view
        if x.dtype != torch.uint8:  # exact; torch's CPU flip has no uint16 kernel
            x = x.to(torch.float32)
        if code >= 4:
            x = x.flip(-1)
        if code % 4:
            x = torch.rot90(x, int(code % 4), dims=(-2, -1))
        y = x.to(torch.float32, copy=True)
        pp = par.index_select(0, idx)
        y.sub_(pp[:, 0, :, None, None]).div_(pp[:, 1, :, None, None])
        out.index_copy_(0, idx, y)
    return out


_KERNELS: dict[str, Any] = {}


def _kernel() -> Any:
    """The compiled uint8 pass, or None where numba is not installed."""
    if "u8" not in _KERNELS:
        try:
            from stainbench.data._augment_kernel import augment_normalize_u8
        except ImportError:  # numba missing: the torch path does the same, slower
            augment_normalize_u8 = None
        _KERNELS["u8"] = augment_normalize_u8
    return _KERNELS["u8"]
