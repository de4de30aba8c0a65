"""Histogram kernels of the statistics pass: exact counts for every dtype, channel count and
piece boundary; threaded and sequential passes give identical statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from stainbench.data import histkernels, stats
from stainbench.data.ingest import IngestOptions, ingest
from stainbench.data.stats import (
    batch_histograms,
    channel_histograms,
    compute_store_stats,
    summarize,
)
from stainbench.data.store import open_store


def _reference(x: np.ndarray) -> np.ndarray:
    bins = 256 if x.dtype == np.uint8 else 65536
    flat = x.reshape(-1, x.shape[-1])
    return np.stack([np.bincount(flat[:, k], minlength=bins) for k in range(flat.shape[1])])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_channel_histograms_are_exact_across_pieces(
    monkeypatch: pytest.MonkeyPatch, dtype: type, channels: int
) -> None:
    monkeypatch.setattr(histkernels, "FLUSH_VALUES", 1000)  # many flushes, ragged last piece
    rng = np.random.default_rng(channels)
    hi = int(np.iinfo(dtype).max) + 1
    x = rng.integers(0, hi, (7, 53, 11, channels)).astype(dtype)
    x[0, 0, 0] = hi - 1  # the extreme bins are counted too
    x[0, 0, 1] = 0
    got = channel_histograms(x)
    assert got.dtype == np.int64 and got.shape == (channels, hi)
    np.testing.assert_array_equal(got, _reference(x))
    np.testing.assert_array_equal(channel_histograms(x[:1, :1, :1]), _reference(x[:1, :1, :1]))


def test_percentiles_from_histograms_equal_numpy() -> None:
    rng = np.random.default_rng(3)
    x = (rng.normal(20000, 3000, (40, 37, 2))).clip(0, 65535).astype(np.uint16)
    summary = summarize(channel_histograms(x))
    for c in range(2):
        v = x[..., c].astype(np.float64)
        expected = [v.mean(), v.std(), v.min(), v.max(), *np.percentile(v, [0.5, 1, 99, 99.5])]
        np.testing.assert_allclose(summary[c], expected, rtol=1e-12)
    per = batch_histograms(x[None])
    np.testing.assert_array_equal(per[0], channel_histograms(x))


@pytest.fixture(scope="module")
def volume_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hist")
    vol = np.random.default_rng(8).integers(0, 60000, (12, 40, 36, 2)).astype(np.uint16)
    tifffile.imwrite(root / "v.tif", vol, photometric="minisblack", planarconfig="contig")
    ingest(root / "v.tif", root / "v.zarr", IngestOptions(layout="volume", chunks=(2, 8, 8)))
    return root / "v.zarr"


@pytest.mark.parametrize(("threads", "processes"), [(1, 1), (2, 1), (3, 1), (1, 2)])
def test_threaded_pass_gives_identical_statistics(
    monkeypatch: pytest.MonkeyPatch, volume_store: Path, threads: int, processes: int
) -> None:
    store = open_store(volume_store)
    ref = compute_store_stats(store, threads=1)
    orig = stats.plan_blocks  # small blocks: many in flight at once, finishing out of order
    monkeypatch.setattr(stats, "plan_blocks", lambda s: orig(s, max_block_bytes=4000))
    got = compute_store_stats(store, threads=threads, processes=processes)
    assert got.n_blocks > 20 and ref.n_blocks < got.n_blocks
    assert got.nbytes == ref.nbytes == 12 * 40 * 36 * 2 * 2  # every voxel once (uint16)
    assert got.stats == ref.stats
    vol = np.asarray(store.volume_array("v", "A")[...]).astype(np.float64)
    for c in range(2):
        train = got.stats["splits"]["train"]["A"]
        assert train["max"][c] <= vol[..., c].max()
        whole = got.stats["per_volume"]["v"]["A"]
        assert whole["p99"][c] == np.percentile(vol[..., c], 99)
        assert whole["mean"][c] == pytest.approx(vol[..., c].mean(), rel=1e-12)


def test_bad_parallelism_is_one_line(volume_store: Path) -> None:
    from stainbench.errors import DataError

    with pytest.raises(DataError, match=r"threads \(0\) and processes \(1\) must be >= 1"):
        compute_store_stats(open_store(volume_store), threads=0)


def test_batch_histograms_count_each_item() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (5, 9, 7, 3)).astype(np.uint8)
    per = batch_histograms(x)
    assert per.shape == (5, 3, 256) and per.dtype == np.int64
    for k in range(5):
        np.testing.assert_array_equal(per[k], _reference(x[k]))
    assert batch_histograms(x[:0]).shape == (0, 3, 256)
    y = rng.integers(0, 65536, (4, 5, 6, 2)).astype(np.uint16)  # uint16, 2 channels
    per = batch_histograms(y)
    for k in range(4):
        np.testing.assert_array_equal(per[k], _reference(y[k]))
    out = np.zeros((4, 2, 65536), dtype=np.int64)[:, :, ::2]  # a strided out: refused
    with pytest.raises(ValueError, match="C-contiguous"):
        histkernels.count_items(y.reshape(4, -1, 2), out)


def test_channel_counter_takes_strided_views_and_checks_channels() -> None:
    rng = np.random.default_rng(6)
    x = rng.integers(0, 65536, (20, 30, 2)).astype(np.uint16)
    counter = histkernels.ChannelCounter(2, 65536)
    counter.add(x[::2, 3:17])  # not contiguous: copied once
    counter.add(x[1::2, 3:17])
    np.testing.assert_array_equal(counter.totals(), _reference(x[:, 3:17]))
    with pytest.raises(ValueError, match="expected 2 channels"):
        counter.add(x[..., :1])


def test_chunk_parts_cover_a_misaligned_region_exactly(volume_store: Path) -> None:
    import zarr

    from stainbench.data.fastread import ChunkReader

    folder = volume_store / "volumes" / "v" / "A"
    reader = ChunkReader.for_array(folder)
    assert reader is not None
    region = (slice(1, 10), slice(3, 37))  # cuts through chunks (2, 8, 8) on both axes
    expected = np.asarray(zarr.open_array(str(folder), mode="r")[region])
    seen = np.zeros(expected.shape, dtype=np.int64)
    got = np.zeros_like(expected)
    for where, part in reader.iter_region(region):
        got[where] = part
        seen[where] += 1
    assert (seen == 1).all()  # every element exactly once
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(reader.read(region), expected)
    assert list(reader.iter_region((slice(4, 4),))) == []


@pytest.mark.parametrize("budget", [1, 3 * 2 * 65536 * 8, 1 << 30])  # 1, 3 or 7 items a group
def test_per_item_blocks_are_counted_in_bounded_groups(
    monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    rng = np.random.default_rng(9)
    tiles = rng.integers(0, 65536, (7, 5, 4, 2)).astype(np.uint16)
    block = stats.Block("train/A", ((0, 7),), "A", ("train",), None, True)
    monkeypatch.setattr(stats, "_PER_ITEM_BYTES", budget)
    got = stats.histogram_block(block, tiles)
    per = batch_histograms(tiles)
    np.testing.assert_array_equal(got.hist, per.sum(axis=0))
    np.testing.assert_array_equal(got.per_item, summarize(per))
    assert got.per_item.shape == (7, 2, len(stats.FIELDS))
