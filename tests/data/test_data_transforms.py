"""Normalization: the three modes, numpy/torch, round trips, serialization, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stainbench.data.transforms import Normalization
from stainbench.errors import DataError

STATS = {
    "schema_version": 1,
    "splits": {
        "train": {
            "A": {
                "value_range": [0, 255],
                "mean": [100.0, 50.0],
                "std": [10.0, 5.0],
                "p1": [20.0, 0.0],
                "p99": [220.0, 100.0],
            }
        }
    },
}


def test_modes_from_stats() -> None:
    r = Normalization.from_stats(STATS, "range", "A")
    assert r.offset == (127.5, 127.5) and r.scale == (127.5, 127.5)
    z = Normalization.from_stats(STATS, "zscore", "A")
    assert z.offset == (100.0, 50.0) and z.scale == (10.0, 5.0)
    p = Normalization.from_stats(STATS, "percentile", "A")
    assert p.offset == (120.0, 50.0) and p.scale == (100.0, 50.0)
    x = np.array([0, 255], dtype=np.uint8).reshape(1, 2, 1).repeat(2, axis=0)  # (C=2, 2, 1)
    np.testing.assert_allclose(r.forward(x)[:, :, 0], [[-1, 1], [-1, 1]])
    np.testing.assert_allclose(p.forward(np.array([[[20.0]], [[100.0]]]))[:, 0, 0], [-1, 1])


@pytest.mark.parametrize("mode", ["range", "zscore", "percentile"])
def test_forward_inverse_numpy_and_torch_agree(mode: str) -> None:
    norm = Normalization.from_stats(STATS, mode, "A")
    x = np.random.default_rng(0).integers(0, 256, (3, 2, 8, 8)).astype(np.uint8)
    y_np = norm.forward(x)
    y_t = norm.forward(torch.from_numpy(x))
    assert y_np.dtype == np.float32 and y_t.dtype == torch.float32
    np.testing.assert_allclose(y_t.numpy(), y_np, rtol=1e-6)
    np.testing.assert_allclose(norm.inverse(y_np), x, atol=1e-3)
    np.testing.assert_allclose(norm.inverse(y_t).numpy(), x, atol=1e-3)
    hwc = np.moveaxis(x, 1, -1)
    np.testing.assert_allclose(np.moveaxis(norm.forward(hwc, channel_axis=-1), -1, 1), y_np)


def test_dict_round_trip_and_bad_dicts() -> None:
    norm = Normalization.from_stats(STATS, "zscore", "A")
    assert Normalization.from_dict(norm.to_dict()) == norm
    with pytest.raises(DataError, match="schema version"):
        Normalization.from_dict({**norm.to_dict(), "schema_version": 7})
    with pytest.raises(DataError, match="malformed"):
        Normalization.from_dict({"schema_version": 1, "mode": "range", "domain": "A"})
    with pytest.raises(DataError, match="unknown normalization mode 'minmax'"):
        Normalization.from_dict({**norm.to_dict(), "mode": "minmax"})
    with pytest.raises(DataError, match="scales must be finite and > 0"):
        Normalization("zscore", "A", (0.0,), (0.0,))


def test_bad_inputs() -> None:
    norm = Normalization.from_stats(STATS, "range", "A")
    with pytest.raises(DataError, match="expected 2 channels"):
        norm.forward(np.zeros((3, 4, 4)))
    with pytest.raises(DataError, match="no normalization statistics"):
        Normalization.from_stats({}, "range", "A")
    with pytest.raises(DataError, match="domain 'B'"):
        Normalization.from_stats(STATS, "zscore", "B")
