"""The compiled batch steps: transform_batch (crop, flip/rotation, channels first) and the
normalization loop behind normalize_raw.

References: ``apply_params`` (numpy flips and ``np.rot90``) per patch, and torch's float32
conversion, subtraction and division (the normalization before the compiled loop). Both must
be matched exactly, for every code, dtype, channel count and crop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import stainbench.data.augment as augment
import stainbench.data.transforms as transforms
from stainbench.data.augment import (
    N_CODES,
    PatchParams,
    apply_params,
    crop,
    sample_params,
    source_affine,
    transform_batch,
)
from stainbench.data.transforms import Normalization, normalize_raw
from stainbench.errors import DataError


def _tiles(dtype: type, n: int, h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    hi = int(np.iinfo(dtype).max)
    return np.random.default_rng(seed).integers(0, hi, (n, h, w, c), endpoint=True).astype(dtype)


def _params(n: int, h: int, w: int, patch: int, seed: int = 1) -> list[PatchParams]:
    """Random crops, every code at least once."""
    rng = np.random.default_rng(seed)
    return [
        PatchParams(
            int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1)), k >= 4, k % 4
        )
        for k in (np.arange(n) % N_CODES)
    ]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize(
    ("c", "h", "w", "patch"),
    # 8-bit RGB with P % 8 == 0 takes the de-interleave + 8x8 transpose route
    [
        (3, 70, 66, 64),
        (3, 260, 258, 256),
        (3, 9, 7, 5),
        (3, 20, 20, 12),
        (1, 12, 9, 9),
        (4, 16, 20, 16),
    ],
)
def test_transform_batch_equals_apply_params(
    dtype: type, c: int, h: int, w: int, patch: int
) -> None:
    tiles = _tiles(dtype, 16, h, w, c)
    params = _params(16, h, w, patch)
    got = transform_batch(tiles, params, patch)
    assert got.dtype == dtype and got.shape == (16, c, patch, patch) and got.flags.c_contiguous
    for j, par in enumerate(params):
        np.testing.assert_array_equal(got[j], apply_params(crop(tiles[j], par, patch), par))


def test_transform_batch_without_numba_gives_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    tiles = _tiles(np.uint8, 8, 10, 10, 3)
    params = _params(8, 10, 10, 8)
    compiled = transform_batch(tiles, params, 8)
    assert augment._kernel() is not None  # numba is a dependency: the compiled pass is used
    monkeypatch.setitem(augment._KERNELS, "transform", None)
    np.testing.assert_array_equal(transform_batch(tiles, params, 8), compiled)


def test_codes_are_the_dihedral_group_and_affine_maps_match() -> None:
    patch = np.arange(5 * 5 * 2).reshape(5, 5, 2)
    seen = set()
    for code in range(N_CODES):
        params = PatchParams(0, 0, code >= 4, code % 4)
        assert params.code == code
        chw = apply_params(patch, params)
        seen.add(chw.tobytes())
        base, si, sj = source_affine(code, 5, 10, 2)
        flat = patch.reshape(-1)
        for ch in range(2):
            for i in range(5):
                for j in range(5):
                    assert chw[ch, i, j] == flat[base + i * si + j * sj + ch]
    assert len(seen) == N_CODES  # eight different transforms
    rng = np.random.default_rng(0)
    assert {sample_params(rng, 8, 8, 4).code for _ in range(200)} == set(range(N_CODES))


def test_bad_transform_arguments() -> None:
    tiles = _tiles(np.uint8, 2, 6, 6, 3)
    with pytest.raises(DataError, match="1 patch parameters for 2 tiles"):
        transform_batch(tiles, [PatchParams(0, 0)], 4)
    with pytest.raises(DataError, match=r"patch 4 at \(3, 0\) is outside the 6x6 tiles"):
        transform_batch(tiles, [PatchParams(0, 0), PatchParams(3, 0)], 4)
    assert transform_batch(tiles[:0], [], 4).shape == (0, 3, 4, 4)


def _torch_reference(raw: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    shape = (raw.shape[0], raw.shape[1], *([1] * (raw.ndim - 2)))
    out = raw.to(torch.float32)
    out.sub_(params[:, 0].reshape(shape))
    return out.div_(params[:, 1].reshape(shape))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16])
@pytest.mark.parametrize("shape", [(6, 3, 17, 17), (2, 9, 8, 8), (3, 3, 2, 5, 5), (4, 1, 7, 7)])
def test_compiled_normalization_equals_torch_bit_for_bit(
    dtype: torch.dtype, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    hi = 255 if dtype == torch.uint8 else 65535
    rng = np.random.default_rng(2)
    raw = torch.from_numpy(rng.integers(0, hi, shape, endpoint=True).astype(np.int64)).to(dtype)
    c = shape[1]
    params = torch.from_numpy(
        np.stack([rng.uniform(-10, hi, (shape[0], c)), rng.uniform(0.3, hi, (shape[0], c))], 1)
    ).float()
    expected = _torch_reference(raw, params)
    assert transforms._normalize_kernel() is not None
    got = normalize_raw(raw, params)
    assert got.dtype == torch.float32 and got.shape == raw.shape
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))
    # a non-contiguous input (e.g. a crop) gives the same
    wide = torch.zeros((*shape[:-1], shape[-1] + 3), dtype=dtype)
    wide[..., 1 : 1 + shape[-1]] = raw
    sliced = normalize_raw(wide[..., 1 : 1 + shape[-1]], params)
    assert torch.equal(sliced.view(torch.int32), expected.view(torch.int32))
    # and so does the torch path (numba missing, other devices)
    monkeypatch.setitem(augment._KERNELS, "normalize", None)
    assert torch.equal(normalize_raw(raw, params).view(torch.int32), expected.view(torch.int32))


def test_compiled_normalization_equals_numpy_forward_per_item() -> None:
    rng = np.random.default_rng(4)
    raw = rng.integers(0, 256, (5, 3, 9, 9)).astype(np.uint8)
    norms = [
        Normalization("zscore", "A", tuple(rng.uniform(0, 255, 3)), tuple(rng.uniform(1, 90, 3)))
        for _ in range(5)
    ]
    params = torch.from_numpy(np.stack([n.params() for n in norms]))
    got = normalize_raw(torch.from_numpy(raw), params).numpy()
    for j, norm in enumerate(norms):
        np.testing.assert_array_equal(got[j].view(np.uint32), norm.forward(raw[j]).view(np.uint32))
