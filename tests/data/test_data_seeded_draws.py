"""The compiled re-implementation of ``default_rng(key).integers`` against numpy itself, and the
tile datasets' items against numpy-drawn crops/flips/rotations (the items of every earlier
version: ``sample_params(default_rng([seed, epoch, index]), ...)``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import stainbench.data.augment as augment
from stainbench.data.augment import apply_params, crop, sample_params, seeded_integers
from stainbench.data.datasets import PairedPatchDataset, UnpairedPatchDataset
from stainbench.data.writer import write_tile_store


def _numpy(keys, highs) -> np.ndarray:
    out = []
    for key in keys:
        rng = np.random.default_rng(list(key))
        out.append([rng.integers(0, h) for h in highs])
    return np.asarray(out, dtype=np.int64).reshape(len(keys), len(highs))


@pytest.mark.parametrize(
    "seeds", [(0, 0), (1, 3), (2**31 + 5, 7), (2**32 - 1, 2**32), (2**40 + 3, 1), (2**63, 2)]
)
def test_seeded_integers_equal_numpy(seeds: tuple[int, int]) -> None:
    seed, epoch = seeds
    keys = [(seed, epoch, i) for i in range(0, 6000, 3)] + [(seed, i) for i in range(5)]
    highs = (1, 1, 2, 4, 3, 257, 1000, 2**31 + 7, 2**32 - 1, 2**32, 7)  # rejection-heavy too
    for ks in (keys[:-5], keys[-5:]):  # keys of one length per call
        assert augment._kernel("draw") is not None
        np.testing.assert_array_equal(seeded_integers(ks, highs), _numpy(ks, highs))


def test_seeded_integers_fall_back_to_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [(0, 1, i) for i in range(50)]
    highs = (2**33, 5)  # a range numpy draws with 64-bit words: numpy does it
    np.testing.assert_array_equal(seeded_integers(keys, highs), _numpy(keys, highs))
    with pytest.raises(ValueError):  # numpy's own error for negative entropy
        seeded_integers([(-1, 0, 0)], (4,))
    monkeypatch.setitem(augment._KERNELS, "draw", None)
    np.testing.assert_array_equal(seeded_integers(keys, (3, 9)), _numpy(keys, (3, 9)))
    assert seeded_integers([], (3,)).shape == (0, 1)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(8)
    a = rng.integers(0, 256, (9, 20, 18, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (5, 22, 19, 3), dtype=np.uint8)
    root = tmp_path_factory.mktemp("draws")
    write_tile_store(root / "p.zarr", "paired", {"train": {"A": a, "B": 255 - a}}, {})
    write_tile_store(root / "u.zarr", "unpaired", {"train": {"A": a, "B": b}}, {})
    return root / "p.zarr", root / "u.zarr", a, b


def test_items_equal_numpy_drawn_patches(stores) -> None:
    paired, unpaired, a, b = stores
    ds = PairedPatchDataset(paired, "train", 12, seed=4)
    ds.set_epoch(3)
    items = ds.__getitems__(list(range(9)))
    for i, item in enumerate(items):
        par = sample_params(np.random.default_rng([4, 3, i]), 20, 18, 12)
        np.testing.assert_array_equal(item["A"].numpy(), apply_params(crop(a[i], par, 12), par))
        np.testing.assert_array_equal(item["B"].numpy(), 255 - item["A"].numpy())
    us = UnpairedPatchDataset(unpaired, "train", 12, seed=6)
    us.set_epoch(1)
    for i, item in enumerate(us.__getitems__([8, 0, 3])):
        index = (8, 0, 3)[i]
        rng = np.random.default_rng([6, 1, index])
        tb = int(rng.integers(0, 5))
        pa, pb = sample_params(rng, 20, 18, 12), sample_params(rng, 22, 19, 12)
        np.testing.assert_array_equal(item["A"].numpy(), apply_params(crop(a[index], pa, 12), pa))
        np.testing.assert_array_equal(item["B"].numpy(), apply_params(crop(b[tb], pb, 12), pb))
