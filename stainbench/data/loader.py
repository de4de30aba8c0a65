"""Normalized patch batches built in place, in this process or in worker processes.

:class:`PatchLoader` delivers what ``normalize_batch(batch)`` gives for each batch of a
``torch.utils.data.DataLoader`` over the same dataset and sampler (the same batches bit for
bit, in the same order), for datasets that write a whole batch in place (``fills_batches``:
``batch_layout(n)`` and ``fill_batch(indices, out)``, see :mod:`stainbench.data.datasets`).
What it saves, per batch:

- no per-item tensors and no collation: the dataset writes the raw batch directly;
- no fresh memory: with ``num_workers=0`` the raw batch goes into one reused buffer; with
  workers, into a ring of batch slots in one shared-memory segment created (and every page
  touched, by the main process and by each worker for its own slots) when the workers start.
  A worker sends only ``(batch number, slot)`` back. ``DataLoader`` hands every batch over in
  fresh shared memory instead, and on this machine's VM every first touch of a 4 KiB page costs
  ~3.6 us on each side: ~0.35 ms per 256 x 256 RGB pair, whatever the dataset does;
- normalization (the compiled float32 pass of
  :func:`~stainbench.data.transforms.normalize_raw`, bit-identical) from the raw batch into
  reused float32 buffers.

**The yielded tensors are reused**: a batch stays valid until the batch after the next one is
requested (two output buffers alternate). Copy what must live longer (``.clone()``).

Workers behave as ``DataLoader``'s: batch ``k`` goes to worker ``k % num_workers``, each worker
has ``prefetch`` batches in flight, each unpickles its own copy of the dataset (the tile
datasets then open the store themselves), ignores Ctrl-C (the main process shuts them down),
exits when the main process disappears, and is seeded like ``DataLoader``'s
(``torch.manual_seed`` and ``random.seed`` with ``base_seed + worker``; the datasets here draw
every random number from ``(seed, epoch, index)`` and use neither). The base seed is drawn
from ``generator`` exactly when ``DataLoader`` draws it (every iteration without workers,
once per worker start with them), so shuffled orders match as well. A failing item is raised
in the main process as one :class:`~stainbench.errors.DataError` line naming it; a worker
that dies is reported with its exit code. Workers persist across iterations; they stop, and
the shared memory is unlinked, on :meth:`PatchLoader.close`, when an iteration ends early
(``break``, an exception, Ctrl-C), when the loader is garbage-collected, or at exit.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import queue
import random
import signal
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

from stainbench.data.transforms import NORM_SUFFIX, normalize_raw
from stainbench.errors import DataError

Layout = dict[str, tuple[tuple[int, ...], np.dtype]]
_ALIGN = 64
_PAGE = 4096
_POLL_S = 1.0


def fills_batches(dataset: Any) -> bool:
    """Whether ``dataset`` writes whole batches in place (``batch_layout``/``fill_batch``)."""
    return bool(getattr(dataset, "fills_batches", False))


class PatchLoader:
    """Iterate normalized float32 batches ``{"A": (n, C, P, P), "B": ...}`` of a dataset.

    ``dataset``: one with ``fills_batches`` (the tile datasets, ``EpochIndexed`` over them).
    ``batch_size``: items per batch; with ``batch_sampler`` it is the largest batch the sampler
    yields (the size of a batch slot). ``shuffle``, ``drop_last``, ``generator``: as
    ``DataLoader`` (a ``RandomSampler``/``SequentialSampler`` in a ``BatchSampler``), ignored
    with ``batch_sampler`` (any iterable of index lists, re-iterated each epoch).
    ``num_workers``: 0 builds batches in this process; N > 0 in N worker processes
    (``start_method``: ``fork``/``spawn``/``forkserver``, default the platform's).
    ``prefetch``: batches in flight per worker (``DataLoader``'s ``prefetch_factor``).
    ``timeout``: seconds to wait for one batch from the workers before a :class:`DataError`
    (0: wait as long as they live).

    Keys of the layout with ``"<key>_norm"`` parameters come out normalized (float32, in
    reused buffers, see the module docstring); other keys come out as fresh copies of the raw
    arrays. Not thread-safe; one iteration at a time.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 1,
        shuffle: bool = False,
        *,
        batch_sampler: Iterable[Sequence[Any]] | None = None,
        drop_last: bool = False,
        num_workers: int = 0,
        generator: torch.Generator | None = None,
        prefetch: int = 2,
        start_method: str | None = None,
        timeout: float = 0.0,
    ) -> None:
        if not fills_batches(dataset):
            raise DataError(
                f"PatchLoader needs a dataset that fills whole batches (batch_layout/"
                f"fill_batch); {type(dataset).__name__} does not: use torch's DataLoader"
            )
        if batch_size < 1 or num_workers < 0 or prefetch < 1:
            raise DataError(
                f"PatchLoader: batch_size ({batch_size}) and prefetch ({prefetch}) must be >= 1, "
                f"num_workers ({num_workers}) >= 0"
            )
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.prefetch = int(prefetch)
        self.generator = generator
        self.start_method = start_method
        self.timeout = float(timeout)
        if batch_sampler is None:
            sampler = (
                RandomSampler(dataset, generator=generator)
                if shuffle
                else SequentialSampler(dataset)
            )
            batch_sampler = BatchSampler(sampler, self.batch_size, drop_last)
        self.batch_sampler = batch_sampler
        self.layout: Layout = dataset.batch_layout(self.batch_size)
        self._norm_pairs = _norm_pairs(self.layout)
        self._raw: dict[str, np.ndarray] | None = None  # the in-process batch buffer
        self._outputs: dict[int, list[dict[str, torch.Tensor]]] = {}
        self._turn = 0
        self._pool: _Pool | None = None
        self._finalizer: weakref.finalize | None = None

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.num_workers == 0:
            _draw_base_seed(self.generator)  # as DataLoader: every iteration
            return self._local()
        if self._pool is not None and self._pool.busy:
            self.close()  # an earlier iteration stopped midway: its batches are in flight
        if self._pool is None:
            self._pool = _Pool(
                self.dataset,
                self.layout,
                self.num_workers,
                self.prefetch,
                self.start_method,
                _draw_base_seed(self.generator),  # as DataLoader: once per worker start
            )
            self._finalizer = weakref.finalize(self, self._pool.close)
        self._pool.busy = True
        return self._pooled(self._pool)

    def close(self) -> None:
        """Stop the workers and free the shared memory (a later iteration starts new ones)."""
        if self._finalizer is not None:
            self._finalizer()
        self._pool, self._finalizer = None, None

    def __enter__(self) -> PatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- iteration -----------------------------------------------------------------------------

    def _batches(self) -> Iterator[list[Any]]:
        for keys in self.batch_sampler:
            keys = list(keys)
            if not 0 < len(keys) <= self.batch_size:
                raise DataError(
                    f"PatchLoader: the sampler yielded a batch of {len(keys)} items; "
                    f"batch_size is {self.batch_size} (the most a batch may hold)"
                )
            yield keys

    def _local(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._raw is None:
            self._raw = {k: np.empty(s, dtype=d) for k, (s, d) in self.layout.items()}
        raw = self._raw
        for keys in self._batches():
            n = len(keys)
            views = {k: v[:n] for k, v in raw.items()}
            self.dataset.fill_batch(keys, views)
            yield self._normalized(views, n)

    def _pooled(self, pool: _Pool) -> Iterator[dict[str, torch.Tensor]]:
        finished = False
        try:
            for slot, n in pool.run(self._batches(), self.timeout):
                batch = self._normalized(pool.views(slot, n), n)
                pool.release(slot)
                yield batch
            finished = True
            pool.busy = False
        finally:
            if not finished:  # stopped early or failed: batches are still in flight
                if self._pool is pool:
                    self.close()
                else:  # a later iteration has replaced it already
                    pool.close()

    def _normalized(self, raw: Mapping[str, np.ndarray], n: int) -> dict[str, torch.Tensor]:
        """The float32 batch from the raw arrays (``n`` items), in the next output buffer."""
        ring = self._outputs.get(n)
        if ring is None:
            ring = [
                {
                    key: torch.empty((n, *self.layout[key][0][1:]), dtype=torch.float32)
                    for key in self._norm_pairs
                }
                for _ in range(2)
            ]
            self._outputs[n] = ring
        out = ring[self._turn % 2]
        self._turn += 1
        batch: dict[str, torch.Tensor] = {}
        for key, value in raw.items():
            if key.endswith(NORM_SUFFIX) and key[: -len(NORM_SUFFIX)] in raw:
                continue
            if key in self._norm_pairs:
                _normalize_into(value, raw[key + NORM_SUFFIX], out[key])
                batch[key] = out[key]
            else:
                batch[key] = torch.from_numpy(value.copy())
        return batch


def _norm_pairs(layout: Layout) -> tuple[str, ...]:
    """The keys normalized by their ``_norm`` parameters; checks their shapes fit."""
    keys = []
    for key, (shape, _dtype) in layout.items():
        params = layout.get(key + NORM_SUFFIX)
        if key.endswith(NORM_SUFFIX) or params is None:
            continue
        n, c = shape[0], shape[1]
        if tuple(params[0]) != (n, 2, c):
            raise DataError(
                f"normalization parameters {tuple(params[0])} do not fit patches {tuple(shape)} "
                f"of {key!r} (expected {(n, 2, c)})"
            )
        keys.append(key)
    return tuple(keys)


def _normalize_into(raw: np.ndarray, params: np.ndarray, out: torch.Tensor) -> None:
    """``out = (float32(raw) - offset) / scale`` per item and channel (``normalize_raw``)."""
    normalize_raw(torch.from_numpy(raw), torch.from_numpy(params), out=out)


def _draw_base_seed(generator: torch.Generator | None) -> int:
    """The draw ``DataLoader`` makes from its generator when it creates an iterator."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


# -- worker pool -----------------------------------------------------------------------------


def _slot_plan(layout: Layout) -> tuple[dict[str, int], int]:
    """Byte offset of every array inside one slot, and the slot's size (whole pages)."""
    offsets, size = {}, 0
    for key, (shape, dtype) in layout.items():
        offsets[key] = size
        size += -(-int(np.prod(shape)) * np.dtype(dtype).itemsize // _ALIGN) * _ALIGN
    return offsets, max(_PAGE, -(-size // _PAGE) * _PAGE)


def _slot_views(buf: Any, layout: Layout, offsets: dict[str, int], base: int) -> dict[str, Any]:
    return {
        k: np.ndarray(shape, dtype=dtype, buffer=buf, offset=base + offsets[k])
        for k, (shape, dtype) in layout.items()
    }


class _Pool:
    """Worker processes writing batches into a persistent ring of shared-memory slots."""

    def __init__(
        self,
        dataset: Any,
        layout: Layout,
        workers: int,
        prefetch: int,
        start_method: str | None,
        base_seed: int,
    ) -> None:
        try:
            payload = pickle.dumps(dataset)
        except Exception as exc:
            raise DataError(
                f"PatchLoader: the dataset cannot be sent to worker processes ({exc}); "
                "use num_workers=0"
            ) from None
        ctx = mp.get_context(start_method)
        self.layout = layout
        self.offsets, self.slot_bytes = _slot_plan(layout)
        n_slots = workers * prefetch
        _check_shm_space(self.slot_bytes * n_slots, workers, prefetch)
        self.shm = SharedMemory(create=True, size=self.slot_bytes * n_slots)
        self.closed = False
        self.busy = False  # an iteration over it has started and not finished
        self._views = [
            _slot_views(self.shm.buf, layout, self.offsets, s * self.slot_bytes)
            for s in range(n_slots)
        ]
        np.ndarray((self.shm.size,), np.uint8, buffer=self.shm.buf).fill(0)  # map every page
        self.owner = [s // prefetch for s in range(n_slots)]
        self.free = [deque(range(w * prefetch, (w + 1) * prefetch)) for w in range(workers)]
        self.results: Any = ctx.Queue()
        self.tasks: list[Any] = [ctx.Queue() for _ in range(workers)]
        self.procs = []
        for w in range(workers):
            proc = ctx.Process(
                target=_worker_loop,
                args=(
                    w,
                    payload,
                    self.shm.name,
                    layout,
                    self.offsets,
                    [(s, s * self.slot_bytes) for s in self.free[w]],
                    self.tasks[w],
                    self.results,
                    base_seed + w,
                    os.getpid(),
                ),
                daemon=True,
                name=f"stainbench-loader-{w}",
            )
            proc.start()
            self.procs.append(proc)

    def views(self, slot: int, n: int) -> dict[str, np.ndarray]:
        return {k: v[:n] for k, v in self._views[slot].items()}

    def release(self, slot: int) -> None:
        self.free[self.owner[slot]].append(slot)

    def run(self, batches: Iterator[list[Any]], timeout: float) -> Iterator[tuple[int, int]]:
        """Dispatch ``batches`` round-robin; yield ``(slot, n)`` of each in order. The caller
        :meth:`release`\\ s a slot before asking for the next batch."""
        workers = len(self.procs)
        sent = 0
        done: dict[int, tuple[int, int, str | None]] = {}
        keys_of: dict[int, list[Any]] = {}
        exhausted = False
        received = 0
        while True:
            while not exhausted and self.free[sent % workers]:
                keys = next(batches, None)
                if keys is None:
                    exhausted = True
                    break
                slot = self.free[sent % workers].popleft()
                self.tasks[sent % workers].put((sent, keys, slot))
                keys_of[sent] = keys
                sent += 1
            if received == sent:
                return
            while received not in done:
                number, slot, n, error = self._receive(timeout)
                done[number] = (slot, n, error)
            slot, n, error = done.pop(received)
            keys = keys_of.pop(received)
            if error is not None:
                raise DataError(
                    f"data loader worker {received % workers}: batch {received} "
                    f"({_short(keys)}): {error}"
                )
            received += 1
            yield slot, n

    def _receive(self, timeout: float) -> tuple[int, int, int, str | None]:
        waited = 0.0
        while True:
            try:
                return self.results.get(timeout=_POLL_S)
            except queue.Empty:
                waited += _POLL_S
            for w, proc in enumerate(self.procs):
                if not proc.is_alive():
                    raise DataError(
                        f"data loader worker {w} (pid {proc.pid}) exited unexpectedly "
                        f"(exit code {proc.exitcode}); see its output above"
                    )
            if timeout and waited >= timeout:
                raise DataError(f"data loader: no batch from the workers in {timeout:g} s")

    def close(self) -> None:
        """Stop the workers, unlink the shared memory. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for q in self.tasks:
            with contextlib.suppress(OSError, ValueError):
                q.put(None)
        deadline = time.monotonic() + 5.0
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for q in (*self.tasks, self.results):
            q.cancel_join_thread()
            q.close()
        self._views = []
        self.shm.close()
        with contextlib.suppress(FileNotFoundError):
            self.shm.unlink()


def _check_shm_space(need: int, workers: int, prefetch: int, where: str = "/dev/shm") -> None:
    """A clear error instead of a bus error when the shared-memory file system is too small
    for the ring (containers often mount 64 MB)."""
    try:
        st = os.statvfs(where)
    except OSError:  # no /dev/shm (not Linux): the platform decides
        return
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise DataError(
            f"PatchLoader: {workers} workers x {prefetch} batches need {need / 2**20:.0f} MB of "
            f"shared memory, {where} has {free / 2**20:.0f} MB free; use fewer workers or "
            "smaller batches, or give the container more (docker run --shm-size=1g)"
        )


def _short(keys: Sequence[Any], most: int = 4) -> str:
    shown = ", ".join(map(str, keys[:most]))
    more = f", ... ({len(keys)} items)" if len(keys) > most else ""
    return f"items {shown}{more}"


def _worker_loop(
    worker: int,
    payload: bytes,
    shm_name: str,
    layout: Layout,
    offsets: dict[str, int],
    slots: list[tuple[int, int]],
    tasks: Any,
    results: Any,
    seed: int,
    parent: int,
) -> None:  # pragma: no cover - runs in the worker processes (the tests check its effects)
    """Fill batches into this worker's slots until told to stop (None) or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
    torch.set_num_threads(1)
    random.seed(seed)
    torch.manual_seed(seed)
    results.cancel_join_thread()
    shm = SharedMemory(name=shm_name)
    views = {s: _slot_views(shm.buf, layout, offsets, base) for s, base in slots}
    try:
        for _s, base in slots:  # map this worker's pages once, before the first batch
            np.ndarray((_slot_plan(layout)[1],), np.uint8, buffer=shm.buf, offset=base).fill(0)
        dataset = pickle.loads(payload)  # this worker's own copy (opens the store itself)
        while True:
            try:
                task = tasks.get(timeout=_POLL_S)
            except queue.Empty:
                if os.getppid() != parent:
                    return
                continue
            if task is None:
                return
            number, keys, slot = task
            n = len(keys)
            out = {k: v[:n] for k, v in views[slot].items()}
            try:
                dataset.fill_batch(keys, out)
            except Exception as exc:
                results.put((number, slot, n, _failure(dataset, keys, out, exc)))
                continue
            results.put((number, slot, n, None))
    finally:
        views.clear()
        shm.close()


def _failure(dataset: Any, keys: list[Any], out: dict[str, np.ndarray], exc: Exception) -> str:
    """One line for a failed batch, naming the first item that fails on its own."""
    culprit = None
    if len(keys) > 1:
        for key in keys:
            try:
                dataset.fill_batch([key], {k: v[:1] for k, v in out.items()})
            except Exception as single:
                culprit, exc = key, single
                break
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if culprit is None else f"item {culprit}: {text}"
