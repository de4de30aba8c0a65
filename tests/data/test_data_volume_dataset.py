"""VolumePatchDataset: 2D, 2.5D and 3D patches, alignment, split ranges, workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torch.utils.data import DataLoader

from stainbench.data.datasets import VolumePatchDataset
from stainbench.data.ingest import IngestOptions, ingest
from stainbench.errors import DataError

Z, Y, X = 10, 24, 24


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Paired volume whose voxels encode their coordinates: channel 0 = z, channel 1 =
    y * X + x; B = A + 1000. Region split: z 0..6 train, 7..9 val."""
    root = tmp_path_factory.mktemp("vol")
    z, y, x = np.meshgrid(np.arange(Z), np.arange(Y), np.arange(X), indexing="ij")
    a = np.stack([z, y * X + x], axis=-1).astype(np.uint16)
    for d, vol in (("A", a), ("B", a + 1000)):
        (root / "src" / d).mkdir(parents=True)
        tifffile.imwrite(
            root / "src" / d / "stack.tif", vol, photometric="minisblack", planarconfig="contig"
        )
    ingest(
        root / "src",
        root / "v.zarr",
        IngestOptions(layout="volume", chunks=(2, 8, 8), val_fraction=0.3),
    )
    return root / "v.zarr"


def _raw(ds: VolumePatchDataset, t: torch.Tensor, d: str, axis: int) -> np.ndarray:
    assert t.dtype == torch.uint16  # items are raw (the stored dtype)
    return t.numpy().astype(np.int64)


def test_2d_patches_are_aligned_slices_of_the_split(store: Path) -> None:
    ds = VolumePatchDataset(store, "train", 8, mode="2d", seed=0, samples_per_epoch=20)
    for i in range(len(ds)):
        item = ds[i]
        assert item["A"].shape == item["B"].shape == (2, 8, 8)
        a, b = _raw(ds, item["A"], "A", 0), _raw(ds, item["B"], "B", 0)
        np.testing.assert_array_equal(b, a + 1000)
        assert len(np.unique(a[0])) == 1 and 0 <= a[0, 0, 0] < 7  # one slice, train z range


def test_25d_stacks_neighbours_as_channels(store: Path) -> None:
    ds = VolumePatchDataset(store, "train", 8, mode="2.5d", depth=3, samples_per_epoch=15)
    for i in range(len(ds)):
        item = ds[i]
        assert item["A"].shape == (6, 8, 8) and item["B"].shape == (2, 8, 8)
        a = _raw(ds, item["A"], "A", 0).reshape(3, 2, 8, 8)  # slice-major channels
        assert item["A_norm"].shape == (2, 6) and item["B_norm"].shape == (2, 2)
        zs = [int(a[k, 0, 0, 0]) for k in range(3)]
        assert zs == [zs[0], zs[0] + 1, zs[0] + 2] and zs[0] >= 0 and zs[2] <= 6
        b = _raw(ds, item["B"], "B", 0)
        np.testing.assert_array_equal(b, a[1] + 1000)  # target is the centre slice


def test_3d_subvolumes_and_val_grid(store: Path) -> None:
    ds = VolumePatchDataset(store, "val", 12, mode="3d", depth=2)
    assert not ds.augment
    assert len(ds) == 2 * 2 * 2  # z origins 7, 8; 2 x 2 grid of 12px patches
    item = ds[len(ds) - 1]
    assert item["A"].shape == (2, 2, 12, 12)
    a = _raw(ds, item["A"], "A", 0)
    assert a[0, :, 0, 0].tolist() == [8, 9]
    assert a[1, 0, 0, 0] == 12 * X + 12  # last grid cell starts at (12, 12)


def test_workers_and_determinism(store: Path) -> None:
    ds = VolumePatchDataset(store, "train", 8, mode="2.5d", depth=3, seed=3, samples_per_epoch=8)
    ref = [b["A"] for b in DataLoader(ds, batch_size=4, num_workers=0)]
    got = [b["A"] for b in DataLoader(ds, batch_size=4, num_workers=2)]
    assert all(torch.equal(x, y) for x, y in zip(ref, got, strict=True))
    ds.set_epoch(1)
    assert not torch.equal(ref[0], next(iter(DataLoader(ds, batch_size=4)))["A"])


def test_bad_volume_dataset_arguments(store: Path) -> None:
    with pytest.raises(DataError, match="odd depth"):
        VolumePatchDataset(store, "train", 8, mode="2.5d", depth=4)
    with pytest.raises(DataError, match="unknown volume mode"):
        VolumePatchDataset(store, "train", 8, mode="4d")
    with pytest.raises(DataError, match="no room"):
        VolumePatchDataset(store, "val", 8, mode="3d", depth=5)
    with pytest.raises(DataError, match="larger than volume"):
        VolumePatchDataset(store, "train", 64)
