"""augment_normalize: the batch step that flips/rotates, moves channels first and normalizes.

Reference: ``apply_params`` (numpy flips and ``np.rot90``) then ``Normalization.forward``
(numpy float32) per patch. The compiled uint8 pass and the torch path (uint16, GPU, no numba)
must both give it bit for bit, for every code, channel count and crop size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stainbench.data.augment import (
    N_CODES,
    PatchParams,
    _kernel,
    _torch_path,
    apply_params,
    augment_normalize,
    sample_params,
    source_affine,
)
from stainbench.data.transforms import Normalization, normalize_batch
from stainbench.errors import DataError


def _batch(dtype: type, channels: int, size: int, n: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    hi = int(np.iinfo(dtype).max)
    raw = rng.integers(0, hi, (n, size, size, channels), endpoint=True).astype(dtype)
    codes = np.arange(n) % N_CODES
    offsets = rng.uniform(-10, hi, (n, channels))
    scales = rng.uniform(0.3, hi / 2, (n, channels))
    params = np.stack([offsets, scales], 1).astype(np.float32)
    return raw, codes, params


def _reference(raw: np.ndarray, codes: np.ndarray, params: np.ndarray) -> np.ndarray:
    out = []
    for b in range(raw.shape[0]):
        code = int(codes[b])
        chw = apply_params(raw[b], PatchParams(0, 0, code >= 4, code % 4))
        norm = Normalization(
            "zscore", "A", tuple(map(float, params[b, 0])), tuple(map(float, params[b, 1]))
        )
        out.append(norm.forward(chw))
    return np.stack(out)


def _bits(x: torch.Tensor) -> np.ndarray:
    return x.numpy().view(np.uint32)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize(("channels", "size"), [(3, 64), (3, 7), (1, 9), (4, 16)])
def test_both_paths_equal_numpy_transform_and_normalization(
    dtype: type, channels: int, size: int
) -> None:
    raw, codes, params = _batch(dtype, channels, size)
    expected = _reference(raw, codes, params).view(np.uint32)
    args = (torch.from_numpy(raw), torch.from_numpy(codes), torch.from_numpy(params))
    got = augment_normalize(*args)
    assert got.dtype == torch.float32 and tuple(got.shape) == (16, channels, size, size)
    np.testing.assert_array_equal(_bits(got), expected)
    np.testing.assert_array_equal(_bits(_torch_path(args[0], codes, args[2])), expected)


def test_the_compiled_pass_is_used_for_uint8() -> None:
    """numba is a dependency: the uint8 CPU path must not silently fall back to torch."""
    assert _kernel() is not None


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
        for c in range(2):
            for i in range(5):
                for j in range(5):
                    assert chw[c, i, j] == flat[base + i * si + j * sj + c]
    assert len(seen) == N_CODES  # eight different transforms
    rng = np.random.default_rng(0)
    drawn = {sample_params(rng, 8, 8, 4).code for _ in range(200)}
    assert drawn == set(range(N_CODES))


def test_single_items_and_batches_agree() -> None:
    raw, codes, params = _batch(np.uint8, 3, 12, n=5, seed=3)
    batch = normalize_batch(
        {
            "A": torch.from_numpy(raw),
            "A_aug": torch.from_numpy(codes),
            "A_norm": torch.from_numpy(params),
        }
    )["A"]
    for b in range(5):
        item = {
            "A": torch.from_numpy(raw[b]),
            "A_aug": torch.tensor(int(codes[b])),
            "A_norm": torch.from_numpy(params[b]),
        }
        one = normalize_batch(item)["A"]
        assert tuple(one.shape) == (3, 12, 12)
        np.testing.assert_array_equal(_bits(one), _bits(batch[b]))


def test_non_contiguous_input_and_empty_batch() -> None:
    raw, codes, params = _batch(np.uint8, 3, 20, n=4, seed=5)
    crop = torch.from_numpy(raw)[:, 2:14, 5:17]  # crops of bigger tiles: not contiguous
    got = augment_normalize(crop, torch.from_numpy(codes), torch.from_numpy(params))
    expected = _reference(np.ascontiguousarray(raw[:, 2:14, 5:17]), codes, params)
    np.testing.assert_array_equal(_bits(got), expected.view(np.uint32))
    empty = augment_normalize(
        torch.zeros((0, 4, 4, 3), dtype=torch.uint8),
        torch.zeros((0,), dtype=torch.int64),
        torch.zeros((0, 2, 3)),
    )
    assert tuple(empty.shape) == (0, 3, 4, 4)


def test_bad_batches_are_refused() -> None:
    raw, codes, params = _batch(np.uint8, 3, 6, n=2)
    r, c, p = torch.from_numpy(raw), torch.from_numpy(codes), torch.from_numpy(params)
    with pytest.raises(DataError, match="square"):
        augment_normalize(r[:, :5], c, p)
    with pytest.raises(DataError, match=r"do not fit patches \(2, 6, 6, 3\)"):
        augment_normalize(r, c, p[:, :, :2])
    with pytest.raises(DataError, match=r"transform codes must be 0\.\.7"):
        augment_normalize(r, torch.tensor([0, 8]), p)
