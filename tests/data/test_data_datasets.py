"""Patch datasets on real stores: aligned augmentation, determinism, DataLoader workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from stainbench.data.datasets import PairedPatchDataset, UnpairedPatchDataset
from stainbench.data.store import create_store
from stainbench.data.transforms import normalize_batch
from stainbench.data.writer import write_tile_store
from stainbench.errors import DataError


@pytest.fixture(scope="module")
def paired(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A paired store whose B is the pixelwise inverse of A (255 - A): alignment is checkable
    pixel by pixel after any crop/flip/rotation."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (12, 24, 20, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("ds") / "p.zarr"
    write_tile_store(
        path, "paired", {"train": {"A": a, "B": 255 - a}, "val": {"A": a[:3], "B": 255 - a[:3]}}, {}
    )
    return path, a


def _raw(ds: PairedPatchDataset, item: dict[str, torch.Tensor], d: str) -> np.ndarray:
    assert item[d].dtype == torch.uint8  # items are raw; normalization happens per batch
    return item[d].numpy().astype(np.int64)


def _dihedral(chw: np.ndarray) -> list[np.ndarray]:
    out = []
    for flip in (False, True):
        x = chw[:, :, ::-1] if flip else chw
        out += [np.rot90(x, k, axes=(1, 2)) for k in range(4)]
    return out


def test_pairs_stay_aligned_pixel_by_pixel(paired) -> None:
    path, a = paired
    ds = PairedPatchDataset(path, "train", patch_size=16, normalization="range", seed=1)
    assert len(ds) == 12 and ds.augment
    seen_transforms = set()
    for i in range(len(ds)):
        item = ds[i]
        assert item["A"].shape == (3, 16, 16) and item["A"].dtype == torch.uint8
        assert item["A_norm"].shape == (2, 3) and item["A_norm"].dtype == torch.float32
        ra, rb = _raw(ds, item, "A"), _raw(ds, item, "B")
        np.testing.assert_array_equal(rb, 255 - ra)
        # the A patch is a crop of tile i under one of the 8 flips/rotations
        tile = np.moveaxis(a[i], -1, 0).astype(np.int64)
        found = None
        for t, cand in enumerate(_dihedral(ra)):
            for y in range(24 - 16 + 1):
                for x in range(20 - 16 + 1):
                    if np.array_equal(tile[:, y : y + 16, x : x + 16], cand):
                        found = t
        assert found is not None
        seen_transforms.add(found)
    assert len(seen_transforms) > 1  # augmentation really flips/rotates


def test_items_are_deterministic_per_seed_epoch_index(paired) -> None:
    path, _ = paired
    ds1 = PairedPatchDataset(path, "train", 16, seed=5)
    ds2 = PairedPatchDataset(path, "train", 16, seed=5)
    assert torch.equal(ds1[3]["A"], ds2[3]["A"])
    ds2.set_epoch(1)
    assert any(not torch.equal(ds1[i]["A"], ds2[i]["A"]) for i in range(len(ds1)))
    ds3 = PairedPatchDataset(path, "train", 16, seed=6)
    assert any(not torch.equal(ds1[i]["A"], ds3[i]["A"]) for i in range(len(ds1)))
    # a batch read together (what DataLoader asks for) gives the items read one at a time
    together = ds1.__getitems__([5, 0, 5, 11])
    for i, item in zip([5, 0, 5, 11], together, strict=True):
        single = ds1[i]
        assert item.keys() == single.keys()
        assert all(torch.equal(item[k], single[k]) for k in item)


def test_val_split_is_centre_crop_without_augmentation(paired) -> None:
    path, a = paired
    ds = PairedPatchDataset(path, "val", patch_size=16)
    assert not ds.augment and len(ds) == 3
    ra = _raw(ds, ds[2], "A")
    np.testing.assert_array_equal(ra, np.moveaxis(a[2, 4:20, 2:18], -1, 0))


def test_dataloader_workers_give_the_same_batches(paired) -> None:
    path, _ = paired
    ds = PairedPatchDataset(path, "train", 16, seed=2)
    ds.set_epoch(3)
    ref = list(DataLoader(ds, batch_size=4, num_workers=0))
    got = list(DataLoader(ds, batch_size=4, num_workers=2))
    assert len(ref) == 3
    for x, y in zip(ref, got, strict=True):
        assert x.keys() == y.keys() == {"A", "A_norm", "B", "B_norm"}
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_zscore_and_percentile_normalization(paired) -> None:
    path, a = paired
    z = PairedPatchDataset(path, "train", None, normalization="zscore", augment=False)
    x = torch.stack([z.normalized(i)["A"] for i in range(len(z))])
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    p = PairedPatchDataset(path, "train", None, normalization="percentile", augment=False)
    item = p.normalized(0)["A"].numpy()
    tile = np.moveaxis(a[0], -1, 0).astype(np.float64)
    for c in range(3):
        lo, hi = np.percentile(tile[c], [1, 99])
        centre = tile[c, 2:22, :]  # patch_size None: the largest centred square (20x20)
        expected = (centre - (lo + hi) / 2) / ((hi - lo) / 2)
        np.testing.assert_allclose(item[c], expected, rtol=1e-5, atol=1e-5)


def test_unpaired_dataset_draws_independent_sides(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (3, 20, 18, 3), dtype=np.uint8)
    path = tmp_path / "u.zarr"
    write_tile_store(path, "unpaired", {"train": {"A": a, "B": b}}, {})
    ds = UnpairedPatchDataset(path, "train", patch_size=12, seed=0)
    assert len(ds) == 7
    items = [ds[i] for i in range(7)]
    assert all(it["B"].shape == (3, 12, 12) for it in items)
    with pytest.raises(DataError, match="PairedPatchDataset needs a paired store"):
        PairedPatchDataset(path, "train", 12)


def test_bad_dataset_arguments(paired) -> None:
    path, _ = paired
    with pytest.raises(DataError, match="patch size 32 is larger than the tiles"):
        PairedPatchDataset(path, "train", 32)
    with pytest.raises(DataError, match="no split 'test'"):
        PairedPatchDataset(path, "test", 8)
    with pytest.raises(DataError, match="unknown normalization mode"):
        PairedPatchDataset(path, "train", 8, normalization="minmax")


@pytest.mark.parametrize("shards", [True, False])
def test_fast_tile_reader_matches_zarr(tmp_path: Path, shards: bool) -> None:
    import zarr

    from stainbench.data.fastread import TileReader
    from stainbench.data.writer import compressor

    rng = np.random.default_rng(4)
    for dtype, hi in ((np.uint8, 256), (np.uint16, 65536)):
        data = rng.integers(0, hi, (70, 9, 11, 3)).astype(dtype)
        g = zarr.open_group(str(tmp_path / f"{dtype.__name__}{shards}.zarr"), mode="w")
        arr = g.create_array(
            "x",
            shape=data.shape,
            dtype=dtype,
            chunks=(1, 9, 11, 3),
            shards=(32, 9, 11, 3) if shards else None,
            compressors=compressor(dtype),
            fill_value=0,
        )
        arr[:65] = data[:65]  # tiles 65..69 never written: read as the fill value
        reader = TileReader.for_array(tmp_path / f"{dtype.__name__}{shards}.zarr" / "x")
        assert reader is not None
        for n in (0, 31, 32, 64, 65, 69):
            np.testing.assert_array_equal(reader.read_tile(n), arr[n])
        region = (slice(30, 67), slice(2, 9), slice(0, 5))
        np.testing.assert_array_equal(reader.read(region), arr[region])
        picks = [64, 3, 66, 3, 0]  # repeats, unwritten tiles, any order
        np.testing.assert_array_equal(
            reader.read_tiles(picks), data[picks] * (np.array(picks) < 65)[:, None, None, None]
        )
        buf = np.full((1, 9, 11, 3), 5, dtype=dtype)
        assert reader.read_chunk((7, 0, 0, 0), out=buf) is buf  # decoded in place
        np.testing.assert_array_equal(buf[0], data[7])
        assert reader.read_chunk((68, 0, 0, 0), out=buf) is buf and (buf == 0).all()  # missing
        with pytest.raises(ValueError, match="out must be a writeable C-contiguous"):
            reader.read_chunk((7, 0, 0, 0), out=np.empty((1, 9, 11, 3), dtype=np.float32))
        with pytest.raises(IndexError):
            reader.read_tiles([70])
    multi = g.create_array(
        "y", shape=(4, 9, 11, 3), dtype="u1", chunks=(2, 9, 11, 3), compressors=compressor()
    )
    multi[...] = 7
    y = TileReader.for_array(tmp_path / f"uint16{shards}.zarr" / "y")
    assert y is not None and (y.read_tile(3) == 7).all()  # several tiles per chunk
    assert (y.read_tiles([3, 0, 2]) == 7).all()
    default = g.create_array("z", shape=(2, 4, 4, 1), dtype="u1", chunks=(1, 4, 4, 1))
    default[...] = 1  # zarr's default codec (zstd) is not our layout: zarr is used instead
    assert TileReader.for_array(tmp_path / f"uint16{shards}.zarr" / "z") is None


def test_fast_and_zarr_paths_give_identical_items(paired) -> None:
    path, _ = paired
    fast = PairedPatchDataset(path, "train", 16, seed=9)
    slow = PairedPatchDataset(path, "train", 16, seed=9)
    slow.fast_read = False
    assert fast._reader("A") is not None
    for i in range(len(fast)):
        assert torch.equal(fast[i]["A"], slow[i]["A"]) and torch.equal(fast[i]["B"], slow[i]["B"])


@pytest.mark.parametrize(("chunk", "shard"), [(1, None), (3, None), (1, 4)])
def test_batched_reads_match_zarr_for_any_chunking(
    tmp_path: Path, chunk: int, shard: int | None
) -> None:
    """Tiles of a batch decoded together (several tiles per chunk: each chunk once; a chunk
    never written: the fill value) equal zarr's, item for item, normalized bit for bit."""
    from stainbench.data.writer import compressor, finalize_with_stats

    rng = np.random.default_rng(8)
    data = rng.integers(0, 256, (10, 12, 14, 3), dtype=np.uint8)
    path = tmp_path / f"c{chunk}.zarr"
    group = create_store(path, "paired")
    for d, values in (("A", data), ("B", 255 - data)):
        arr = group.create_array(
            f"train/{d}",
            shape=values.shape,
            dtype="uint8",
            chunks=(chunk, 12, 14, 3),
            shards=(shard, 12, 14, 3) if shard else None,
            compressors=compressor(),
            fill_value=0,
        )
        arr[:9] = values[:9]  # the chunk (shard) of tile 9 is never written: fill value
    finalize_with_stats(group, path, "paired", {"test": "chunking"})
    fast = PairedPatchDataset(path, "train", 10, seed=3)
    slow = PairedPatchDataset(path, "train", 10, seed=3)
    slow.fast_read = False
    assert fast._reader("A") is not None
    order = [9, 2, 0, 1, 2, 7, 8, 4]  # repeats and several tiles of one chunk
    got, ref = fast.__getitems__(order), slow.__getitems__(order)
    for i, x, y in zip(order, got, ref, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
        single = fast[i]
        assert all(torch.equal(x[k], single[k]) for k in x)
    assert int(got[0]["A"].sum()) == 0  # tile 9: fill value
    batch = normalize_batch(torch.utils.data.default_collate(got))
    expected = normalize_batch(torch.utils.data.default_collate(ref))
    assert torch.equal(batch["A"].view(torch.int32), expected["A"].view(torch.int32))


def test_training_wrapper_fetches_batches_across_epochs(paired) -> None:
    """The training loop's EpochIndexed forwards a batch of (epoch, index) keys to the
    dataset's batched fetch, epoch by epoch: the same items as fetching them one at a time."""
    from stainbench.training.data import EpochIndexed, StepBatches

    path, _ = paired
    ds = PairedPatchDataset(path, "train", 16, seed=4)
    wrapped = EpochIndexed(ds)
    keys = [(0, 3), (0, 11), (1, 3), (1, 0), (2, 7)]  # a batch across an epoch boundary
    got = wrapped.__getitems__(keys)
    reference = PairedPatchDataset(path, "train", 16, seed=4)
    for (epoch, index), item in zip(keys, got, strict=True):
        reference.set_epoch(epoch)
        expected = reference[index]
        assert all(torch.equal(item[k], expected[k]) for k in expected)
    sampler = StepBatches(len(ds), 5, seed=1, start=0, stop=4)  # 20 keys over two epochs
    loader = DataLoader(wrapped, batch_sampler=sampler, num_workers=0)
    for keys, batch in zip(sampler, loader, strict=True):
        for j, key in enumerate(keys):
            item = wrapped[key]
            assert torch.equal(batch["A"][j], item["A"]) and torch.equal(batch["B"][j], item["B"])
