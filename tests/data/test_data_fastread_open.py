"""The fast tile reader keeps shard files open and mapped (a bounded number): reads stay right
past the bound, after close(), in a pickled copy, into a caller's buffer, with unwritten
chunks and shards; a shard file cut short gives a clear error."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import zarr

import stainbench.data.fastread as fastread
from stainbench.data.fastread import TileReader
from stainbench.data.writer import compressor


def test_open_shards_are_bounded_and_reads_stay_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastread, "_OPEN_SHARDS", 3)
    data = np.random.default_rng(0).integers(0, 256, (40, 6, 5, 3), dtype=np.uint8)
    arr = zarr.open_group(str(tmp_path / "s.zarr"), mode="w").create_array(
        "x",
        shape=data.shape,
        dtype="u1",
        chunks=(1, 6, 5, 3),
        shards=(4, 6, 5, 3),
        compressors=compressor(),
        fill_value=0,
    )
    arr[...] = data
    reader = TileReader.for_array(tmp_path / "s.zarr" / "x")
    assert reader is not None
    order = [39, 0, 5, 17, 1, 38, 22, 9, 0, 33]  # ten shards touched, three kept open
    out = np.empty((len(order), 6, 5, 3), dtype=np.uint8)
    assert reader.read_tiles(order, out=out) is out
    np.testing.assert_array_equal(out, data[order])
    assert len(reader._fds) == 3 and len(reader._maps) == 3
    fds = list(reader._fds.values())
    copy = pickle.loads(pickle.dumps(reader))  # descriptors and mappings are not carried over
    assert copy._fds == {} and copy._maps == {}
    np.testing.assert_array_equal(copy.read_tiles(order[::-1]), data[order[::-1]])
    mappings = [m.obj for m in reader._maps.values()]
    reader.close()
    assert reader._maps == {} and all(m.closed for m in mappings)
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    np.testing.assert_array_equal(reader.read_tile(13), data[13])  # reopens
    sparse = zarr.open_group(str(tmp_path / "s.zarr"), mode="a").create_array(
        "y",
        shape=data.shape,
        dtype="u1",
        chunks=(1, 6, 5, 3),
        shards=(4, 6, 5, 3),
        compressors=compressor(),
        fill_value=9,
    )
    sparse[:5] = data[:5]  # shard 0 whole, shard 1 with one chunk, shards 2.. never written
    reader_y = TileReader.for_array(tmp_path / "s.zarr" / "y")
    assert reader_y is not None and reader_y._shard_rows
    got = reader_y.read_tiles([4, 0, 5, 30, 3])
    np.testing.assert_array_equal(got[[0, 1, 4]], data[[4, 0, 3]])
    assert (got[2] == 9).all() and (got[3] == 9).all()
    with pytest.raises(ValueError, match="out must be a writeable C-contiguous"):
        reader.read_tiles([1, 2], out=np.empty((3, 6, 5, 3), dtype=np.uint8))


def test_shard_cut_short_is_a_clear_error(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    arr = zarr.open_group(str(tmp_path / "c.zarr"), mode="w").create_array(
        "x",
        shape=data.shape,
        dtype="u1",
        chunks=(1, 32, 32, 3),
        shards=(8, 32, 32, 3),
        compressors=compressor(),
        fill_value=0,
    )
    arr[...] = data
    shard = tmp_path / "c.zarr" / "x" / "c" / "0" / "0" / "0" / "0"
    raw = shard.read_bytes()
    reader = TileReader.for_array(tmp_path / "c.zarr" / "x")
    assert reader is not None
    index = reader._index((0, 0, 0, 0), str(shard))
    last = int(index[:, 0].argmax())  # the chunk stored last; keep the index at the end
    cut = int(index[last, 0]) + 4
    shard.write_bytes(raw[:cut] + raw[-(8 * 16 + 4) :])
    fresh = TileReader.for_array(tmp_path / "c.zarr" / "x")
    assert fresh is not None
    with pytest.raises(OSError, match="lies past the end of the shard file"):
        fresh.read_tiles([last])
