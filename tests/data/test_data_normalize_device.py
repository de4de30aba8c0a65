"""Per-batch normalization on a CUDA device gives the same bits as the per-item numpy path.

The training loop moves raw integer batches to the device and normalizes them there
(``normalize_batch(batch, device)``); CUDA's float32 subtraction and division are correctly
rounded (PyTorch is not built with fast math), so the result must equal
``Normalization.forward`` on the host bit for bit. Only imports numpy, torch and
``stainbench.data.transforms`` (runs on a GPU machine without zarr).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stainbench.data.transforms import Normalization, normalize_batch


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
def test_cuda_batch_normalization_is_bit_identical(dtype: type) -> None:
    rng = np.random.default_rng(7)
    hi = int(np.iinfo(dtype).max)
    raw = rng.integers(0, hi + 1, (6, 3, 40, 36)).astype(dtype)
    norms = [
        Normalization("range", "A", (hi / 2,) * 3, (hi / 2,) * 3),
        Normalization("zscore", "A", (123.456, 7.1, hi * 0.61), (0.37, 55.5, hi * 0.093)),
    ]
    for _ in range(4):  # percentile-like parameters, different per item
        lo, top = sorted(rng.uniform(0, hi, 2))
        norms.append(Normalization("percentile", "A", ((lo + top) / 2,) * 3, ((top - lo) / 2,) * 3))
    assert len(norms) == len(raw)
    params = torch.from_numpy(np.stack([n.params() for n in norms]))  # item i: norms[i]
    batch = {"A": torch.from_numpy(raw), "A_norm": params}
    got = normalize_batch(batch, torch.device("cuda"))["A"]
    assert got.is_cuda and got.dtype == torch.float32
    expected = np.stack([n.forward(x) for n, x in zip(norms, raw, strict=True)])
    np.testing.assert_array_equal(got.cpu().numpy().view(np.uint32), expected.view(np.uint32))
