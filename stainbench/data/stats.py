"""Normalization statistics from exact per-channel histograms, in one streaming pass.

Stored data is uint8 or uint16, so a per-channel histogram (256 or 65,536 bins) is a small,
exact summary of any amount of data: mean, std, min, max and percentiles follow from it with
no approximation, histograms of independent chunks simply add up (so a Dask cluster gives the
same numbers as one process), and memory stays bounded by the few blocks in flight plus the
bins.

Statistics layout (``store.stats``, schema :data:`STATS_SCHEMA_VERSION`)::

    {"schema_version": 1, "fields": [...FIELDS], "percentiles": [0.5, 1, 99, 99.5],
     "splits": {"train": {"A": DomainStats, "B": DomainStats}, "val": {...}},
     "per_image": {"train/A": "stats/train/A", ...},      # tile stores: (N, C, 8) arrays
     "per_volume": {"vol0": {"A": DomainStats, ...}}}      # volume stores

    DomainStats = {"dtype": "uint8", "value_range": [0, 255], "channels": C, "count": pixels,
                   "mean": [C floats], "std": [...], "min": [...], "max": [...],
                   "p0.5": [...], "p1": [...], "p99": [...], "p99.5": [...]}

Percentiles use numpy's default ("linear") definition, so they equal ``np.percentile`` on the
whole array; ``std`` is the population standard deviation (``ddof=0``, as ``np.std``).
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stainbench.errors import DataError

STATS_SCHEMA_VERSION = 1
PERCENTILES: tuple[float, ...] = (0.5, 1.0, 99.0, 99.5)
FIELDS: tuple[str, ...] = ("mean", "std", "min", "max", "p0.5", "p1", "p99", "p99.5")
#: Bins (bytes) of per-item histograms held at once while a block is counted.
_PER_ITEM_BYTES = 16 << 20
#: Default threads of the in-process pass (no scheduler): two per core, so that the threads
#: waiting for the disk are covered. Each reads, decompresses and counts its own blocks (the
#: compiled counting releases the GIL). At most 8: tile blocks are assembled in memory.
IN_PROCESS_THREADS = min(8, 2 * (os.cpu_count() or 1))


def n_bins(dtype: np.dtype | str) -> int:
    """Histogram size for a stored dtype (uint8: 256, uint16: 65,536)."""
    dt = np.dtype(dtype)
    if dt == np.uint8:
        return 256
    if dt == np.uint16:
        return 65536
    raise DataError(f"statistics need uint8 or uint16 data, got {dt}")


def channel_histograms(x: np.ndarray) -> np.ndarray:
    """Per-channel histogram of ``x`` (``(..., C)`` uint8/uint16): int64 ``(C, bins)``."""
    from stainbench.data.histkernels import ChannelCounter  # compiled on first use

    counter = ChannelCounter(x.shape[-1], n_bins(x.dtype))
    counter.add(x)
    return counter.totals()


def batch_histograms(x: np.ndarray) -> np.ndarray:
    """Histogram of each item of a batch ``(B, ..., C)``: int64 ``(B, C, bins)``."""
    bins = n_bins(x.dtype)
    b, c = x.shape[0], x.shape[-1]
    out = np.zeros((b, c, bins), dtype=np.int64)
    if x.size:
        from stainbench.data.histkernels import count_items

        count_items(np.ascontiguousarray(x).reshape(b, -1, c), out)
    return out


def summarize(hist: np.ndarray) -> np.ndarray:
    """Statistics from histograms ``(..., bins)``: float64 ``(..., len(FIELDS))``.

    Vectorized over the leading axes; empty histograms give NaN everywhere.
    """
    h = np.asarray(hist, dtype=np.int64)
    lead = h.shape[:-1]
    h2 = h.reshape(-1, h.shape[-1])
    out = np.full((h2.shape[0], len(FIELDS)), np.nan)
    rows = np.nonzero(h2.sum(axis=1))[0]
    if rows.size:
        h2 = h2[rows]
        values = np.arange(h2.shape[1], dtype=np.float64)
        n = h2.sum(axis=1)
        mean = (h2 * values).sum(axis=1) / n
        var = (h2 * (values - mean[:, None]) ** 2).sum(axis=1) / n
        present = h2 > 0
        vmin = np.argmax(present, axis=1).astype(np.float64)
        vmax = (h2.shape[1] - 1 - np.argmax(present[:, ::-1], axis=1)).astype(np.float64)
        cum = np.cumsum(h2, axis=1)
        cols = [mean, np.sqrt(var), vmin, vmax]
        for q in PERCENTILES:
            k = q / 100.0 * (n - 1)
            lo = np.floor(k).astype(np.int64)
            frac = k - lo
            hi = np.minimum(lo + 1, n - 1)
            v_lo = (cum <= lo[:, None]).sum(axis=1).astype(np.float64)
            v_hi = (cum <= hi[:, None]).sum(axis=1).astype(np.float64)
            diff = v_hi - v_lo
            cols.append(np.where(frac >= 0.5, v_hi - diff * (1 - frac), v_lo + diff * frac))
        out[rows] = np.stack(cols, axis=1)
    return out.reshape(*lead, len(FIELDS))


def domain_stats(hist: np.ndarray, dtype: np.dtype | str) -> dict[str, Any]:
    """A ``DomainStats`` mapping from a ``(C, bins)`` histogram."""
    summary = summarize(hist)
    dt = np.dtype(dtype)
    out: dict[str, Any] = {
        "dtype": dt.name,
        "value_range": [0, int(np.iinfo(dt).max)],
        "channels": int(hist.shape[0]),
        "count": int(hist[0].sum()),
    }
    for j, field in enumerate(FIELDS):
        out[field] = [float(v) for v in summary[:, j]]
    return out


def check_stats(stats: Mapping[str, Any], where: str = "stats") -> None:
    """Raise :class:`DataError` if ``stats`` is missing or of another schema version."""
    if not stats:
        raise DataError(f"{where}: no normalization statistics; run 'stainbench data stats'")
    version = stats.get("schema_version")
    if version != STATS_SCHEMA_VERSION:
        raise DataError(
            f"{where}: statistics schema version {version!r}, expected {STATS_SCHEMA_VERSION}; "
            "run 'stainbench data stats' again"
        )


# --------------------------------------------------------------------------------------------
# Whole-store pass


@dataclass(frozen=True)
class Block:
    """One independent unit of work: a chunk-aligned block of one array.

    ``key`` is the array's path in the store; ``index`` the slices along the first two axes;
    ``split``/``domain``/``volume`` say where its histogram is added; ``per_item`` asks for a
    histogram per index along axis 0 (per-tile statistics).
    """

    key: str
    index: tuple[tuple[int, int], ...]
    domain: str
    splits: tuple[str, ...]
    volume: str | None
    per_item: bool


@dataclass
class BlockResult:
    block: Block
    hist: np.ndarray  # (C, bins) int64
    per_item: np.ndarray | None  # (B, C, len(FIELDS)) float64
    dtype: str = "uint8"


def run_block(store_path: str, block: Block, scratch: ChunkScratch | None = None) -> BlockResult:
    """Read one block and histogram it (the function Dask workers run).

    Blocks without per-item statistics (volumes) are counted chunk by chunk as they are
    decoded, never assembled: one chunk in memory per block, no extra copy. ``scratch``: a
    thread's readers and buffers, reused from block to block (None: fresh ones).
    """
    scratch = scratch if scratch is not None else ChunkScratch()
    sl = tuple(slice(a, b) for a, b in block.index)
    reader = scratch.reader(f"{store_path}/{block.key}")
    if reader is not None:
        if block.per_item:
            return histogram_block(block, reader.read(sl))
        return BlockResult(block, scratch.count_region(reader, sl), None, reader.dtype.name)
    import zarr

    arr = zarr.open_array(f"{store_path}/{block.key}", mode="r")
    return histogram_block(block, np.asarray(arr[sl]))


class ChunkScratch:
    """One thread's state for counting blocks: a :class:`ChunkReader` per array (its
    ``zarr.json`` parsed once, not once per block; its read buffer reused) and a reused
    chunk-shaped buffer to decode into, so that counting a chunk allocates nothing (a fresh
    1 MB buffer per chunk costs page faults comparable to decoding it).

    Not thread-safe: one per thread.
    """

    def __init__(self) -> None:
        self._readers: dict[str, Any] = {}
        self._decoded: dict[str, np.ndarray] = {}

    def reader(self, folder: str) -> Any:
        """The :class:`~stainbench.data.fastread.ChunkReader` of ``folder``, or None when
        its layout is not one the fast path reads (zarr reads it then)."""
        if folder not in self._readers:
            from stainbench.data.fastread import ChunkReader

            self._readers[folder] = ChunkReader.for_array(folder)
        return self._readers[folder]

    def count_region(self, reader: Any, region: tuple[slice, ...]) -> np.ndarray:
        """Per-channel histogram ``(C, bins)`` int64 of ``reader``'s array over ``region``
        (plain slices), decoding one chunk at a time into this thread's buffer."""
        from stainbench.data.histkernels import ChannelCounter

        counter = ChannelCounter(reader.shape[-1], n_bins(reader.dtype))
        key = str(reader.folder)
        chunk = self._decoded.get(key)
        if chunk is None:
            chunk = self._decoded[key] = np.empty(reader.chunks, dtype=reader.dtype)
        for _, part in reader.iter_region(region, out=chunk):
            counter.add(part)
        return counter.totals()


def histogram_block(block: Block, data: np.ndarray) -> BlockResult:
    """Histogram the pixels ``data`` of ``block`` (already read).

    Per-item histograms are built a group of items at a time, at most ``_PER_ITEM_BYTES`` of
    bins (uint16 tiles have 65,536 bins per channel: 1.5 MB per RGB tile), so the memory per
    block stays bounded whatever the block's item count.
    """
    if not block.per_item:
        return BlockResult(block, channel_histograms(data), None, data.dtype.name)
    c = data.shape[-1]
    total = np.zeros((c, n_bins(data.dtype)), dtype=np.int64)
    group = max(1, _PER_ITEM_BYTES // total.nbytes)
    summaries = [np.zeros((0, c, len(FIELDS)))]
    for start in range(0, len(data), group):
        per = batch_histograms(data[start : start + group])
        total += per.sum(axis=0)
        summaries.append(summarize(per))
    return BlockResult(block, total, np.concatenate(summaries), data.dtype.name)


def plan_blocks(store: Any, max_block_bytes: int = 32 << 20) -> list[Block]:
    """Chunk-aligned blocks covering every array of ``store`` (a TileStore)."""
    blocks: list[Block] = []
    if store.kind == "volume":
        regions: dict[str, list[tuple[str, int, int]]] = {}
        for split in store.splits:
            for ref in store.volumes(split):
                regions.setdefault(ref.name, []).append((split, ref.z[0], ref.z[1]))
        for name, parts in regions.items():
            cuts = sorted({z for _, a, b in parts for z in (a, b)})
            for domain in store.domains(store.splits[0]):
                arr = store.volume_array(name, domain)
                key = f"volumes/{name}/{domain}"
                for z0, z1 in _aligned_ranges(arr.shape[0], arr.chunks[0], cuts):
                    owners = tuple(s for s, a, b in parts if a <= z0 and z1 <= b)
                    for y0, y1 in _row_ranges(arr, z1 - z0, max_block_bytes):
                        blocks.append(Block(key, ((z0, z1), (y0, y1)), domain, owners, name, False))
        return blocks
    for split in store.splits:
        for domain in store.domains(split):
            arr = store.array(split, domain)
            item_bytes = int(np.prod(arr.shape[1:])) * arr.dtype.itemsize
            step = _outer_chunk(arr)[0]
            per_block = max(1, max_block_bytes // max(1, item_bytes * step)) * step
            for n0 in range(0, arr.shape[0], per_block):
                n1 = min(arr.shape[0], n0 + per_block)
                blocks.append(Block(f"{split}/{domain}", ((n0, n1),), domain, (split,), None, True))
    return blocks


def _outer_chunk(arr: Any) -> tuple[int, ...]:
    shards = getattr(arr, "shards", None)
    return tuple(shards) if shards else tuple(arr.chunks)


def _aligned_ranges(length: int, step: int, cuts: list[int]) -> Iterator[tuple[int, int]]:
    edges = sorted({*range(0, length, step), length, *[c for c in cuts if 0 <= c <= length]})
    for a, b in itertools.pairwise(edges):
        if b > a:
            yield a, b


def _row_ranges(arr: Any, depth: int, max_block_bytes: int) -> Iterator[tuple[int, int]]:
    row_bytes = depth * int(np.prod(arr.shape[2:])) * arr.dtype.itemsize
    step = arr.chunks[1]
    rows = max(1, max_block_bytes // max(1, row_bytes * step)) * step
    for y0 in range(0, arr.shape[1], rows):
        yield y0, min(arr.shape[1], y0 + rows)


@dataclass
class StatsResult:
    """What :func:`compute_store_stats` returns: the attribute mapping and per-tile arrays."""

    stats: dict[str, Any]
    per_image: dict[str, np.ndarray]
    n_blocks: int
    nbytes: int


def compute_store_stats(
    store: Any,
    scheduler: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    threads: int = IN_PROCESS_THREADS,
    processes: int = 1,
) -> StatsResult:
    """Compute all statistics of a store in one pass over its chunks.

    ``store``: a :class:`~stainbench.data.store.TileStore` (complete) or any object with the
    same API (ingestion passes one over the store it is writing). ``scheduler``: None computes
    in this process; ``"local"`` starts a local Dask cluster; any other string is the address
    of a running Dask scheduler (e.g. ``tcp://10.0.0.5:8786``). In this process, ``threads``
    threads each read, decompress and count their own blocks in parallel (reading, Blosc and
    the compiled counting all release the GIL; 1: one block at a time); ``processes`` > 1
    uses that many spawned worker processes instead (fed block by block, so memory stays
    bounded per process; each pays its own start-up). The numbers are identical in every case
    (integer histograms add up in any order).
    ``progress(done_bytes, total_bytes)`` is called after each block.
    """
    blocks = plan_blocks(store)
    sizes = _block_sizes(store, blocks)
    total = int(sum(sizes))
    acc = StatsAccumulator()
    done = 0
    if processes < 1 or threads < 1:
        raise DataError(f"statistics: threads ({threads}) and processes ({processes}) must be >= 1")
    parallel = (threads, processes)
    results = _iter_results(str(store.path), blocks, sizes, scheduler, parallel)
    for result, size in results:
        acc.add(result)
        done += size
        if progress is not None:
            progress(done, total)
    return StatsResult(acc.finish(), acc.per_image_arrays(), len(blocks), total)


def _block_sizes(store: Any, blocks: list[Block]) -> list[int]:
    """Bytes of voxels in each block (each array's metadata looked up once: zarr takes ~0.5 ms
    per lookup, and a large volume has thousands of blocks)."""
    per_row: dict[tuple[str, int], int] = {}
    sizes = []
    for block in blocks:
        key = (block.key, len(block.index))
        if key not in per_row:
            arr = store.group[block.key]
            per_row[key] = int(np.prod(arr.shape[len(block.index) :])) * arr.dtype.itemsize
        n = 1
        for a, b in block.index:
            n *= b - a
        sizes.append(n * per_row[key])
    return sizes


def _iter_results(
    path: str,
    blocks: list[Block],
    sizes: list[int],
    scheduler: str | None,
    parallel: tuple[int, int],
) -> Iterator[tuple[BlockResult, int]]:
    if scheduler is None:
        yield from _pooled(path, blocks, sizes, *parallel)
        return
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    else:
        _check_reachable(scheduler)
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise DataError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    try:
        size_of = {i: s for i, s in enumerate(sizes)}
        futures = [
            client.submit(_run_indexed, path, b, i, pure=False) for i, b in enumerate(blocks)
        ]
        for future in as_completed(futures):
            index, result = future.result()
            future.release()
            yield result, size_of[index]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _pooled(
    path: str,
    blocks: list[Block],
    sizes: list[int],
    threads: int,
    processes: int,
) -> Iterator[tuple[BlockResult, int]]:
    """Blocks in this machine: on ``processes`` spawned processes when > 1, otherwise on
    ``threads`` threads of this process; at most ``workers + 1`` blocks in flight.

    Reading, decompressing and counting release the GIL, so threads work in parallel; memory
    stays bounded by the blocks in flight (<= 32 MB of voxels each; volume blocks hold one
    decoded chunk at a time).
    """
    import multiprocessing
    from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

    if processes <= 1 and threads <= 1:
        scratch = ChunkScratch()
        for block, size in zip(blocks, sizes, strict=True):
            yield run_block(path, block, scratch), size
        return
    pool: Executor
    if processes > 1:
        context = multiprocessing.get_context("spawn")  # zarr's event-loop thread: never fork
        pool, workers = ProcessPoolExecutor(processes, mp_context=context), processes
        task: Callable[[str, Block], BlockResult] = run_block
    else:
        pool, workers = ThreadPoolExecutor(threads, thread_name_prefix="stats"), threads
        task = functools.partial(_run_in_thread, threading.local())
    with pool:
        pending: list[tuple[Future[BlockResult], int]] = []
        for block, size in zip(blocks, sizes, strict=True):
            pending.append((pool.submit(task, path, block), size))
            if len(pending) > workers:
                future, done_size = pending.pop(0)
                yield future.result(), done_size
        for future, done_size in pending:
            yield future.result(), done_size


def _run_in_thread(local: threading.local, path: str, block: Block) -> BlockResult:
    """:func:`run_block` with the calling thread's :class:`ChunkScratch` (kept in ``local``,
    which belongs to one pass)."""
    scratch = getattr(local, "scratch", None)
    if scratch is None:
        scratch = local.scratch = ChunkScratch()
    return run_block(path, block, scratch)


def _check_reachable(address: str) -> None:
    """Fail fast (one line) when a ``tcp://host:port`` scheduler refuses connections."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme != "tcp" or parsed.hostname is None or parsed.port is None:
        return
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=5).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataError(f"cannot reach the Dask scheduler at {address}: {reason}") from None


def _run_indexed(path: str, block: Block, index: int) -> tuple[int, BlockResult]:
    return index, run_block(path, block)


class StatsAccumulator:
    """Adds block histograms into per-split/domain, per-volume and per-tile results.

    Writers that hold the tiles in memory anyway (demo, ingest) feed it with
    :meth:`add_tiles` and skip reading the store back; the numbers are the same as
    :func:`compute_store_stats` gives (a test checks it).
    """

    def __init__(self) -> None:
        self.split_hist: dict[tuple[str, str], np.ndarray] = {}
        self.volume_hist: dict[tuple[str, str], np.ndarray] = {}
        self.per_item: dict[str, dict[int, np.ndarray]] = {}
        self.dtypes: dict[str, str] = {}

    def add(self, r: BlockResult) -> None:
        b = r.block
        self.dtypes[b.domain] = r.dtype
        for split in b.splits:
            _add(self.split_hist, (split, b.domain), r.hist)
        if b.volume is not None:
            _add(self.volume_hist, (b.volume, b.domain), r.hist)
        if r.per_item is not None:
            self.per_item.setdefault(b.key, {})[b.index[0][0]] = r.per_item

    def add_tiles(self, split: str, domain: str, start: int, tiles: np.ndarray) -> None:
        """Add tiles ``(B, H, W, C)`` stored at ``split/domain[start:start + B]``."""
        key = f"{split}/{domain}"
        block = Block(key, ((start, start + len(tiles)),), domain, (split,), None, True)
        self.add(histogram_block(block, tiles))

    def finish(self) -> dict[str, Any]:
        splits: dict[str, dict[str, Any]] = {}
        for (split, domain), hist in sorted(self.split_hist.items()):
            splits.setdefault(split, {})[domain] = domain_stats(hist, self.dtypes[domain])
        out: dict[str, Any] = {
            "schema_version": STATS_SCHEMA_VERSION,
            "fields": list(FIELDS),
            "percentiles": list(PERCENTILES),
            "splits": splits,
        }
        if self.per_item:
            out["per_image"] = {key: f"stats/{key}" for key in sorted(self.per_item)}
        if self.volume_hist:
            per_volume: dict[str, dict[str, Any]] = {}
            for (name, domain), hist in sorted(self.volume_hist.items()):
                per_volume.setdefault(name, {})[domain] = domain_stats(hist, self.dtypes[domain])
            out["per_volume"] = per_volume
        return out

    def per_image_arrays(self) -> dict[str, np.ndarray]:
        return {
            key: np.concatenate([parts[k] for k in sorted(parts)], axis=0)
            for key, parts in self.per_item.items()
        }


def _add(target: dict[tuple[str, str], np.ndarray], key: tuple[str, str], h: np.ndarray) -> None:
    if key in target:
        target[key] += h
    else:
        target[key] = h.copy()


def write_per_image(group: Any, per_image: Mapping[str, np.ndarray]) -> None:
    """Write per-tile statistics arrays ``stats/<split>/<domain>`` into an open zarr group.

    The chunk is written even when all values are zero, so a missing chunk file is damage.
    """
    import zarr

    with zarr.config.set({"array.write_empty_chunks": True}):
        for key, values in per_image.items():
            arr = group.create_array(
                f"stats/{key}",
                shape=values.shape,
                dtype="float64",
                chunks=values.shape if values.size else None,
                overwrite=True,
            )
            arr[...] = values
            arr.attrs["fields"] = list(FIELDS)


def recompute_store_stats(
    path: Any,
    scheduler: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    threads: int = IN_PROCESS_THREADS,
    processes: int = 1,
) -> StatsResult:
    """Recompute and store the statistics of the complete store at ``path``.

    Replaces ``stats`` in the store's attributes and the per-tile arrays; the manifest (and
    its hash) are unchanged. ``scheduler``, ``threads`` and ``processes`` as in
    :func:`compute_store_stats`. A damaged store (an array of the manifest or a chunk file
    missing, see :func:`stainbench.data.info.store_problems`) is refused with a
    :class:`DataError` before anything is read or written.
    """
    import zarr

    from stainbench.data.info import store_problems
    from stainbench.data.store import open_store, update_stats

    store = open_store(path)
    problems = store_problems(store.path)
    if problems:
        more = f" (and {len(problems) - 1} more; see 'stainbench data info')"
        raise DataError(
            f"{store.path}: damaged store: {problems[0]}"
            + (more if len(problems) > 1 else "")
            + "; statistics not changed; re-ingest it with --force"
        )
    result = compute_store_stats(
        store,
        scheduler=scheduler,
        progress=progress,
        threads=threads,
        processes=processes,
    )
    group = zarr.open_group(str(store.path), mode="r+")
    write_per_image(group, result.per_image)
    update_stats(store.path, result.stats)
    return result
