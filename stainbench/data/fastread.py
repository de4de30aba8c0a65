"""A fast path for reading the arrays stainbench writes, chunk by chunk.

zarr-python 3 spends about 1.5-3 ms of CPU per indexing call (its asyncio machinery), more
than decoding a PNG tile. Patch datasets read one tile per call and the statistics pass reads
thousands of chunks, so for the layouts this project writes (local files, default chunk key
encoding, ``bytes`` + ``blosc`` codecs, optionally inside ``sharding_indexed`` shards with the
index at the end, protected by ``crc32c``) this module reads the chunk bytes itself and
decodes them with numcodecs. Decoding is done by the real codec libraries (Blosc, CRC32C from
numcodecs); only the addressing (chunk keys, the shard index) follows the zarr v3
specification here.

Shard files stay open (the last 32 per reader, read with ``pread``); for a batch of tiles
(:meth:`ChunkReader.read_tiles`) they are also memory-mapped, so chunks decode straight from
the page cache into the caller's array. The stores are read-only while training: a shard file
cut short raises a clear error, but one cut short *while mapped* would end the process
(SIGBUS), as with any memory-mapped reader.

:meth:`ChunkReader.for_array` returns None for any other layout (other codecs, key
encodings, storage transformers, big-endian data), and the callers fall back to zarr. Tests
check that both paths return identical data.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import mmap
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_EMPTY = 2**64 - 1
_INDEX_CACHE = 4096
_OPEN_SHARDS = 32
_POPULATE_BYTES = 64 << 20


class ChunkReader:
    """Reads chunks and chunk-covered regions of one local zarr v3 array.

    Open it in the process that reads (the datasets do so lazily in each DataLoader worker).
    Not thread-safe (reused read buffer, caches): one reader per thread.
    """

    def __init__(
        self,
        folder: Path,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunks: tuple[int, ...],
        shards: tuple[int, ...] | None,
        fill_value: Any,
    ) -> None:
        import numcodecs

        self.folder = folder
        self.shape = shape
        self.dtype = dtype
        self.chunks = chunks
        self.shards = shards
        self.fill_value = fill_value
        self._blosc = numcodecs.Blosc()
        self._crc = numcodecs.CRC32C()
        self._index_cache: dict[tuple[int, ...], np.ndarray | None] = {}
        self._fds: dict[str, int] = {}  # open shard files (see _fd)
        self._maps: dict[str, memoryview] = {}  # mapped shard files (see _mapped)
        self._raw: mmap.mmap | None = None  # reused read buffer of unsharded chunks (_read_file)
        self._root = str(folder / "c")  # chunk keys: "c/i/j/..." (plain strings: pathlib is slow)
        if shards is not None:
            self._inner = tuple(s // c for s, c in zip(shards, chunks, strict=True))
        # shards holding a run of whole chunks along axis 0 only, decoded straight into a
        # caller's array (no byte swapping): read_tiles' fast path
        self._shard_rows = (
            shards is not None
            and all(i == 1 for i in self._inner[1:])
            and (dtype.itemsize == 1 or sys.byteorder == "little")
        )

    @classmethod
    def for_array(cls, folder: str | Path) -> ChunkReader | None:
        """A reader for the array stored in ``folder``, or None if its layout is not ours."""
        try:
            meta = json.loads((Path(folder) / "zarr.json").read_text(encoding="utf-8"))
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
            cke = meta["chunk_key_encoding"]
            separator = cke.get("configuration", {}).get("separator", "/")
            if cke.get("name") != "default" or separator != "/":
                return None
            if meta["chunk_grid"].get("name") != "regular":
                return None
            outer = tuple(int(s) for s in meta["chunk_grid"]["configuration"]["chunk_shape"])
            codecs = meta["codecs"]
            fill = meta.get("fill_value", 0)
            if len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed":
                conf = codecs[0]["configuration"]
                inner = tuple(int(s) for s in conf["chunk_shape"])
                index_codecs = conf["index_codecs"]
                endian = index_codecs[0].get("configuration", {}).get("endian")
                if (
                    any(o % i for o, i in zip(outer, inner, strict=True))
                    or conf.get("index_location", "end") != "end"
                    or [c["name"] for c in index_codecs] != ["bytes", "crc32c"]
                    or endian not in (None, "little")
                    or not _blosc_pipeline(conf["codecs"], dtype)
                ):
                    return None
                return cls(Path(folder), shape, dtype, inner, outer, fill)
            if not _blosc_pipeline(codecs, dtype):
                return None
            return cls(Path(folder), shape, dtype, outer, None, fill)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            return None

    # -- chunks ----------------------------------------------------------------------------

    def read_chunk(self, coords: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
        """The chunk at grid ``coords``: a full chunk-shaped array (edge chunks padded).

        ``out``: decode into this C-contiguous, chunk-shaped array of the array's dtype
        instead of a new one (callers that decode many chunks save the allocation, which on
        this machine costs as much as decoding); the result is then ``out`` itself.
        """
        if out is not None:
            self._check_out(out)
        if self.shards is None:
            n = self._read_file(self._key(coords))
            if n is None:
                return self._fill(out)
            return self._decode(memoryview(self._raw)[:n], out)  # type: ignore[arg-type]
        shard = tuple(c // r for c, r in zip(coords, self._inner, strict=True))
        inner = tuple(c % r for c, r in zip(coords, self._inner, strict=True))
        path = self._key(shard)
        index = self._index(shard, path)
        if index is None:
            return self._fill(out)
        flat = inner[0] if len(inner) == 1 else int(np.ravel_multi_index(inner, self._inner))
        offset, nbytes = (int(v) for v in index[flat])
        if offset == _EMPTY and nbytes == _EMPTY:
            return self._fill(out)
        return self._decode(os.pread(self._fd(path), nbytes, offset), out)

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """``array[region]`` for plain slices (step 1); missing axes mean the whole axis."""
        bounds = self._bounds(region)
        out = np.empty([b - a for a, b in bounds], dtype=self.dtype)
        if out.size:
            for dst, part in self.iter_region(region):
                out[dst] = part
        return out

    def iter_region(
        self, region: tuple[slice, ...], out: np.ndarray | None = None
    ) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
        """The chunks covering ``array[region]``, one at a time: ``(where, part)`` pairs, where
        ``part`` is a view of one decoded chunk and ``where`` its place in ``array[region]``.

        Consumers that do not need the region assembled (the statistics pass) save the copy
        into one output array and hold one chunk at a time. ``out``: a chunk-shaped buffer
        (as for :meth:`read_chunk`) every chunk is decoded into; each ``part`` is then valid
        until the next one is yielded.
        """
        bounds = self._bounds(region)
        if any(b <= a for a, b in bounds):
            return
        ranges = [
            range(a // c, math.ceil(b / c)) for (a, b), c in zip(bounds, self.chunks, strict=True)
        ]
        for coords in itertools.product(*ranges):
            chunk = self.read_chunk(coords, out=out)
            src, dst = [], []
            for (a, b), c, k in zip(bounds, self.chunks, coords, strict=True):
                lo, hi = max(a, k * c), min(b, (k + 1) * c)
                src.append(slice(lo - k * c, hi - k * c))
                dst.append(slice(lo - a, hi - a))
            yield tuple(dst), chunk[tuple(src)]

    def _bounds(self, region: tuple[slice, ...]) -> list[tuple[int, int]]:
        bounds = []
        for i, n in enumerate(self.shape):
            sl = region[i] if i < len(region) else slice(None)
            start, stop, step = sl.indices(n)
            if step != 1:
                raise ValueError("only contiguous slices are supported")
            bounds.append((start, max(start, stop)))
        return bounds

    def read_tile(self, n: int) -> np.ndarray:
        """Tile ``n`` of an ``(N, H, W, C)`` array (one tile per chunk is fastest)."""
        if not 0 <= n < self.shape[0]:
            raise IndexError(n)
        if self.chunks[0] == 1 and tuple(self.chunks[1:]) == tuple(self.shape[1:]):
            return self.read_chunk((n, *([0] * (len(self.shape) - 1))))[0]
        return self.read((slice(n, n + 1),))[0]

    def read_tiles(self, tiles: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """Tiles ``tiles`` of an ``(N, H, W, C)`` array as one ``(n, H, W, C)`` array: a new
        one, or ``out`` (C-contiguous, that shape, the array's dtype), filled and returned.

        For whole-tile chunks every chunk is decoded straight into its place in the output
        (allocating a fresh buffer per tile costs more than decoding it here: the allocator
        returns freed memory to the system and pays page faults on the next batch); chunks of
        several tiles are decoded once each into one reused buffer, however many of their tiles
        are asked for.
        """
        shape = (len(tiles), *self.shape[1:])
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        elif problem := out_problem(out, shape, self.dtype):
            raise ValueError(problem)
        for t in tiles:
            if not 0 <= t < self.shape[0]:
                raise IndexError(t)
        if tuple(self.chunks[1:]) != tuple(self.shape[1:]):
            for j, t in enumerate(tiles):
                out[j] = self.read_tile(int(t))
            return out
        zeros = (0,) * (len(self.shape) - 1)
        step = self.chunks[0]
        if step == 1 and self._shard_rows:
            self._read_sharded_tiles(tiles, out)
            return out
        if step == 1:
            for j, t in enumerate(tiles):
                self.read_chunk((int(t), *zeros), out=out[j : j + 1])
            return out
        buffer = np.empty(self.chunks, dtype=self.dtype)
        by_chunk: dict[int, list[int]] = {}
        for j, t in enumerate(tiles):
            by_chunk.setdefault(int(t) // step, []).append(j)
        for k, rows in by_chunk.items():
            chunk = self.read_chunk((k, *zeros), out=buffer)
            for j in rows:
                out[j] = chunk[int(tiles[j]) - k * step]
        return out

    def close(self) -> None:
        """Close the shard files kept open (reading again reopens them)."""
        maps, self._maps = self._maps, {}
        for view in maps.values():
            _unmap(view)
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fds"] = {}  # descriptors, mappings and buffers belong to this process
        state["_maps"] = {}
        state["_raw"] = None
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- internals -------------------------------------------------------------------------

    def _read_sharded_tiles(self, tiles: Sequence[int], out: np.ndarray) -> None:
        """:meth:`read_tiles` for one tile per chunk inside shards, each chunk decoded
        straight into ``out[j]`` (the per-chunk bookkeeping of :meth:`read_chunk` done once:
        ~15% of the read time of a 256 x 256 RGB tile)."""
        import numcodecs.blosc as blosc

        per = self._inner[0]
        zeros = (0,) * (len(self.shape) - 1)
        flat = out.reshape(len(tiles), -1).view(np.uint8)
        with _no_blosc_threads():
            for j, t in enumerate(tiles):
                s, r = divmod(int(t), per)
                shard = (s, *zeros)
                path = self._key(shard)
                index = self._index(shard, path)
                entry = None if index is None else index[r]
                if entry is None or (entry[0] == _EMPTY and entry[1] == _EMPTY):
                    out[j] = self.fill_value
                    continue
                offset, nbytes = int(entry[0]), int(entry[1])
                mapped = self._mapped(path)
                if offset + nbytes > len(mapped):
                    raise OSError(
                        f"{path}: chunk {r} (bytes {offset}..{offset + nbytes}) lies past the "
                        f"end of the shard file ({len(mapped)} bytes): the store is damaged"
                    )
                blosc.decompress(mapped[offset : offset + nbytes], flat[j])

    def _mapped(self, path: str) -> memoryview:
        """Shard file ``path`` mapped read-only (the last ``_OPEN_SHARDS``): chunks decode
        straight from the page cache, without copying them out first (~14 us of ~87 per
        256 x 256 RGB tile). Shards up to ``_POPULATE_BYTES`` are mapped in whole at once."""
        view = self._maps.get(path)
        if view is None:
            if len(self._maps) >= _OPEN_SHARDS:
                _unmap(self._maps.pop(next(iter(self._maps))))
            fd = self._fd(path)
            flags = mmap.MAP_SHARED
            if os.fstat(fd).st_size <= _POPULATE_BYTES:
                flags |= getattr(mmap, "MAP_POPULATE", 0)
            view = memoryview(mmap.mmap(fd, 0, flags=flags, prot=mmap.PROT_READ))
            self._maps[path] = view
        return view

    def _fd(self, path: str) -> int:
        """A read-only descriptor of shard file ``path``, kept open (the last
        ``_OPEN_SHARDS``): opening the file per chunk cost as much as reading the chunk."""
        fd = self._fds.get(path)
        if fd is None:
            if len(self._fds) >= _OPEN_SHARDS:
                os.close(self._fds.pop(next(iter(self._fds))))
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            self._fds[path] = fd
        return fd

    def _read_file(self, path: str) -> int | None:
        """Read chunk file ``path`` into the reader's reused buffer; its size, None if missing.

        The buffer is page-aligned (an anonymous mapping) and kept: reading cold files into a
        fresh bytes object or ``bytearray`` cost twice the system time here (1.8 s against
        0.9 s for 2.3 GB of chunk files, ``docs/benchmarks/data.md``), and a fresh buffer per
        chunk pays page faults comparable to decoding it."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            if self._raw is None or len(self._raw) < size:
                self._raw = mmap.mmap(-1, max(size, 1))
            return os.readv(fd, [memoryview(self._raw)[:size]])
        finally:
            os.close(fd)

    def _key(self, coords: tuple[int, ...]) -> str:
        return "/".join((self._root, *map(str, coords)))

    def _index(self, shard: tuple[int, ...], path: str) -> np.ndarray | None:
        if shard in self._index_cache:
            return self._index_cache[shard]
        size = int(np.prod(self._inner)) * 16 + 4
        try:
            with open(path, "rb") as fh:
                fh.seek(-size, 2)
                raw = fh.read(size)
            index: np.ndarray | None = np.frombuffer(self._crc.decode(raw), dtype="<u8")
            index = index.reshape(-1, 2)  # type: ignore[union-attr]
        except FileNotFoundError:
            index = None
        if len(self._index_cache) >= _INDEX_CACHE:
            self._index_cache.pop(next(iter(self._index_cache)))
        self._index_cache[shard] = index
        return index

    def _check_out(self, out: np.ndarray) -> None:
        problem = out_problem(out, tuple(self.chunks), self.dtype)
        if problem:
            raise ValueError(problem)

    def _decode(self, data: bytes | memoryview, out: np.ndarray | None = None) -> np.ndarray:
        import numcodecs.blosc

        with _no_blosc_threads():
            if out is not None and (self.dtype.itemsize == 1 or sys.byteorder == "little"):
                numcodecs.blosc.decompress(data, out.reshape(-1).view(np.uint8))
                return out
            raw = self._blosc.decode(data)
        arr = np.frombuffer(raw, dtype=self.dtype.newbyteorder("<")).reshape(self.chunks)
        if out is None:
            return arr.astype(self.dtype, copy=False)
        out[...] = arr  # big-endian machine: byte-swapping copy
        return out

    def _fill(self, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return np.full(self.chunks, self.fill_value, dtype=self.dtype)
        out.fill(self.fill_value)
        return out


@contextlib.contextmanager
def _no_blosc_threads() -> Iterator[None]:
    """Blosc decodes in the calling thread meanwhile: its own threads only add overhead for
    one chunk (and fight DataLoader workers for the cores). The setting is restored after."""
    import numcodecs.blosc

    previous = numcodecs.blosc.use_threads
    numcodecs.blosc.use_threads = False
    try:
        yield
    finally:
        numcodecs.blosc.use_threads = previous


def out_problem(out: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """Why ``out`` cannot be decoded into as an array of ``shape`` and ``dtype`` (it must be
    writeable and C-contiguous), or None when it can."""
    if (
        out.shape != tuple(shape)
        or out.dtype != dtype
        or not out.flags.c_contiguous
        or not out.flags.writeable
    ):
        return (
            f"out must be a writeable C-contiguous {np.dtype(dtype)} array of shape "
            f"{tuple(shape)}, got {out.dtype} {out.shape}"
        )
    return None


def _unmap(view: memoryview) -> None:
    """Release a mapping of :meth:`ChunkReader._mapped` (left to the garbage collector if a
    slice of it is still alive somewhere)."""
    mapping = view.obj
    with contextlib.suppress(BufferError):
        view.release()
        mapping.close()  # type: ignore[attr-defined]


#: The name the patch datasets use (one tile per chunk).
TileReader = ChunkReader


def _blosc_pipeline(codecs: list[dict[str, Any]], dtype: np.dtype) -> bool:
    """True for exactly ``[bytes (little endian, or any for 1-byte data), blosc]``."""
    if len(codecs) != 2 or codecs[0]["name"] != "bytes" or codecs[1]["name"] != "blosc":
        return False
    endian = codecs[0].get("configuration", {}).get("endian")
    return endian in (None, "little") or dtype.itemsize == 1
