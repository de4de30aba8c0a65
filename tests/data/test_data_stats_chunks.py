"""The volume statistics pass decodes chunk by chunk into reused buffers: every layout it
meets gives the numbers numpy gives on the whole array, on threads and in one thread."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile

from stainbench.data.fastread import ChunkReader
from stainbench.data.ingest import IngestOptions, ingest
from stainbench.data.stats import FIELDS, PERCENTILES, ChunkScratch, recompute_store_stats
from stainbench.data.store import open_store


def _np_stats(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    cols = [flat.mean(0), flat.std(0), flat.min(0), flat.max(0)]
    cols += [np.percentile(flat, q, axis=0) for q in PERCENTILES]
    return np.stack(cols, 1)


def _ds(ds: dict) -> np.ndarray:
    return np.stack([ds[f] for f in FIELDS], 1)


def _volume(tmp_path: Path, dtype: type, channels: int, shards: tuple | None) -> np.ndarray:
    """A (13, 40, 36, C) volume (edge chunks on every axis for chunks (4, 16, 16)) whose
    first 8 slices and one more chunk are zero, so those chunks (whole shards, and one chunk
    inside a shard) are never written: they read as the fill value."""
    hi = int(np.iinfo(dtype).max)
    rng = np.random.default_rng(channels)
    vol = rng.integers(1, hi, (13, 40, 36, channels), endpoint=True).astype(dtype)
    vol[:8] = 0
    vol[8:12, :16, :16] = 0
    vol[9, 20, 0] = hi  # both extreme bins are counted
    if channels == 1:
        tifffile.imwrite(tmp_path / "v.tif", vol[..., 0])
    else:
        tifffile.imwrite(tmp_path / "v.tif", vol, photometric="minisblack", planarconfig="contig")
    options = IngestOptions(layout="volume", chunks=(4, 16, 16), shards=shards)
    ingest(tmp_path / "v.tif", tmp_path / "v.zarr", options)
    return vol


@pytest.mark.parametrize(
    ("dtype", "channels", "shards"),
    [(np.uint16, 1, None), (np.uint8, 3, None), (np.uint16, 2, (8, 32, 32))],
)
def test_volume_pass_matches_numpy_for_every_layout(
    tmp_path: Path, dtype: type, channels: int, shards: tuple | None
) -> None:
    vol = _volume(tmp_path, dtype, channels, shards)
    folder = tmp_path / "v.zarr" / "volumes" / "v" / "A"
    reader = ChunkReader.for_array(folder)
    assert reader is not None and (reader.shards is not None) == (shards is not None)
    files = [p for p in (folder / "c").rglob("*") if p.is_file()]
    outer = reader.shards or reader.chunks
    grid = math.prod(math.ceil(s / c) for s, c in zip(reader.shape, outer, strict=True))
    assert 0 < len(files) < grid  # the all-zero chunks (or shards) were not written
    runs = [
        recompute_store_stats(tmp_path / "v.zarr", threads=3),
        recompute_store_stats(tmp_path / "v.zarr", threads=2),
        recompute_store_stats(tmp_path / "v.zarr", threads=1),
    ]
    assert runs[0].stats == runs[1].stats == runs[2].stats
    assert runs[0].nbytes == vol.nbytes
    stored = open_store(tmp_path / "v.zarr").stats
    assert stored == runs[0].stats
    whole = _ds(stored["per_volume"]["v"]["A"])
    np.testing.assert_allclose(whole, _np_stats(vol), rtol=1e-12, atol=1e-9)
    z = open_store(tmp_path / "v.zarr").volumes("train")[0].z
    train = _ds(stored["splits"]["train"]["A"])
    np.testing.assert_allclose(train, _np_stats(vol[z[0] : z[1]]), rtol=1e-12, atol=1e-9)


def test_scratch_counts_regions_and_falls_back_on_odd_files(tmp_path: Path) -> None:
    vol = _volume(tmp_path, np.uint16, 1, None)
    folder = tmp_path / "v.zarr" / "volumes" / "v" / "A"
    reader = ChunkReader.for_array(folder)
    assert reader is not None
    scratch = ChunkScratch()
    region = (slice(2, 13), slice(5, 39))  # cuts through chunks, covers missing ones

    def expected() -> np.ndarray:
        part = vol[region].reshape(-1)
        return np.bincount(part, minlength=65536)[None]

    np.testing.assert_array_equal(scratch.count_region(reader, region), expected())
    # a chunk file larger than the buffer: the reader decodes it (here: a valid Blosc chunk
    # padded with trailing bytes, which Blosc ignores)
    chunk = folder / "c" / "2" / "0" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes() + bytes(2 << 20))
    np.testing.assert_array_equal(scratch.count_region(reader, region), expected())
    empty = scratch.count_region(reader, (slice(3, 3),))
    assert empty.shape == (1, 65536) and not empty.any()
    with pytest.raises(ValueError, match="contiguous"):
        scratch.count_region(reader, (slice(0, 8, 2),))
