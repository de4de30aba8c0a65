"""A fast path for reading whole tiles from the tile arrays stainbench writes.

zarr-python 3 spends about 1.5-3 ms of CPU per indexing call (its asyncio machinery), more
than decoding a PNG tile. Patch datasets read one tile per call, so for the one layout this
project writes (local files, one tile per chunk, ``bytes`` + ``blosc`` codecs, optionally
inside ``sharding_indexed`` shards with the index at the end, protected by ``crc32c``) this
module reads the chunk bytes itself and decodes them with numcodecs. Decoding is done by the
real codec libraries (Blosc, CRC32C from numcodecs); only the addressing (chunk key, shard
index) follows the zarr v3 specification here.

:meth:`TileReader.for_array` returns None for any other layout (other codecs, chunk shapes,
key encodings, remote stores), and the caller falls back to zarr. A test checks that both
paths return identical tiles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

_EMPTY = 2**64 - 1


class TileReader:
    """Reads tile ``n`` (``(H, W, C)``) of a ``(N, H, W, C)`` array chunked one tile per chunk.

    Open file handles are per process: create the reader after a DataLoader worker starts
    (the datasets do so lazily).
    """

    def __init__(
        self,
        folder: Path,
        shape: tuple[int, ...],
        dtype: np.dtype,
        tiles_per_shard: int | None,
        fill_value: Any,
    ) -> None:
        import numcodecs

        self.folder = folder
        self.shape = shape
        self.dtype = dtype
        self.tiles_per_shard = tiles_per_shard
        self.fill_value = fill_value
        self._blosc = numcodecs.Blosc()
        self._crc = numcodecs.CRC32C()
        self._index_cache: dict[int, np.ndarray] = {}

    @classmethod
    def for_array(cls, folder: str | Path) -> TileReader | None:
        """A reader for the array stored in ``folder``, or None if its layout is not ours."""
        meta_path = Path(folder) / "zarr.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        try:
            if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
                return None
            if meta.get("storage_transformers"):
                return None
            dtype = np.dtype(meta["data_type"])
            if dtype not in (np.uint8, np.uint16):
                return None
            shape = tuple(int(s) for s in meta["shape"])
            if len(shape) != 4:
                return None
            cke = meta["chunk_key_encoding"]
            if (
                cke.get("name") != "default"
                or cke.get("configuration", {}).get("separator", "/") != "/"
            ):
                return None
            outer = tuple(int(s) for s in meta["chunk_grid"]["configuration"]["chunk_shape"])
            codecs = meta["codecs"]
            tile_chunk = (1, *shape[1:])
            if len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed":
                conf = codecs[0]["configuration"]
                inner = tuple(int(s) for s in conf["chunk_shape"])
                index_codecs = [c["name"] for c in conf["index_codecs"]]
                little = conf["index_codecs"][0].get("configuration", {}).get("endian")
                if (
                    inner != tile_chunk
                    or outer[1:] != shape[1:]
                    or conf.get("index_location", "end") != "end"
                    or index_codecs != ["bytes", "crc32c"]
                    or little not in (None, "little")
                    or not _blosc_pipeline(conf["codecs"], dtype)
                ):
                    return None
                return cls(Path(folder), shape, dtype, outer[0], meta.get("fill_value", 0))
            if outer != tile_chunk or not _blosc_pipeline(codecs, dtype):
                return None
            return cls(Path(folder), shape, dtype, None, meta.get("fill_value", 0))
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    def read(self, n: int) -> np.ndarray:
        """Tile ``n`` as a new ``(H, W, C)`` array."""
        if not 0 <= n < self.shape[0]:
            raise IndexError(n)
        if self.tiles_per_shard is None:
            path = self.folder / "c" / str(n) / "0" / "0" / "0"
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return self._fill()
            return self._decode(data)
        shard, inner = divmod(n, self.tiles_per_shard)
        path = self.folder / "c" / str(shard) / "0" / "0" / "0"
        index = self._index(shard, path)
        if index is None:
            return self._fill()
        offset, nbytes = (int(v) for v in index[inner])
        if offset == _EMPTY and nbytes == _EMPTY:
            return self._fill()
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(nbytes)
        return self._decode(data)

    def _index(self, shard: int, path: Path) -> np.ndarray | None:
        cached = self._index_cache.get(shard)
        if cached is not None:
            return cached
        size = (self.tiles_per_shard or 1) * 16 + 4
        try:
            with open(path, "rb") as fh:
                fh.seek(-size, 2)
                raw = fh.read(size)
        except (FileNotFoundError, OSError):
            return None
        index = np.frombuffer(self._crc.decode(raw), dtype="<u8").reshape(-1, 2)
        self._index_cache[shard] = index
        return index

    def _decode(self, data: bytes) -> np.ndarray:
        raw = self._blosc.decode(data)
        arr = np.frombuffer(raw, dtype=self.dtype.newbyteorder("<"))
        return arr.reshape(self.shape[1:]).astype(self.dtype, copy=False)

    def _fill(self) -> np.ndarray:
        return np.full(self.shape[1:], self.fill_value, dtype=self.dtype)


def _blosc_pipeline(codecs: list[dict[str, Any]], dtype: np.dtype) -> bool:
    """True for exactly ``[bytes (little endian or none), blosc]``."""
    if len(codecs) != 2 or codecs[0]["name"] != "bytes" or codecs[1]["name"] != "blosc":
        return False
    endian = codecs[0].get("configuration", {}).get("endian")
    return endian in (None, "little") or dtype.itemsize == 1
