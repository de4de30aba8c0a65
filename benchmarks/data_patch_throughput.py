"""Paired patch throughput: the zarr store (two chunk shapes) against a folder of PNG files.

The same N tile pairs (256 x 256 RGB uint8, random crops of scikit-image's IHC field: A the
hematoxylin-only rendering, B the original) are written as

- ``png``: ``A/<i>.png`` and ``B/<i>.png`` (Pillow, default compression), read by a dataset
  that decodes both PNGs per item and then applies the same batch step as the store's datasets;
- ``zarr 1x256x256x3 (sharded 64)``: the store's own layout (one tile per chunk, 64 tiles per
  shard file), read by ``PairedPatchDataset`` (fast tile reader);
- ``zarr 8x256x256x3``: eight tiles per chunk (fast reader: each chunk touched by a batch is
  decoded once per batch);
- ``zarr 1x256x256x3 via zarr API``: the store's layout with the fast reader switched off;
- ``in memory``: the same tiles already decoded, the same batch step: what the ``DataLoader``
  and the batch step cost without any reading or decoding (the ceiling of every source).

Every pipeline delivers **normalized float32 ``(B, 3, 256, 256)`` batches** to the consumer.
Three pipelines, measured in the same run for every source:

- ``loader`` (what training uses on the CPU now): ``stainbench.data.loader.PatchLoader``: the
  dataset writes each batch in place (``fill_batch``: tiles decoded into a reused buffer, one
  compiled crop/flip/rotation/channels-first pass into the batch), no per-item tensors or
  collation; with workers, into a persistent, pre-faulted shared-memory ring of batch slots
  (only the slot number crosses a queue); the consuming process normalizes (compiled pass)
  into reused float32 buffers;
- ``batch``: ``torch.utils.data.DataLoader`` fetching a batch's items together
  (``__getitems__``, the same ``fill_batch`` underneath), collating them, and
  ``normalize_batch`` in the consuming process (the pipeline of the previous results; with
  workers every batch crosses in fresh shared memory);
- ``item`` (the pipeline before that, for comparison): items fetched one at a time, each
  flipped/rotated and made channels-first with numpy (``apply_params``), collated, then
  normalized with torch's float32 conversion, subtraction and division.

The PNG baseline is ``PNG folder, batch`` (``DataLoader``, Pillow decoding); the PNG dataset
also implements ``fill_batch``, so ``PNG folder, loader`` shows what the new loader gives PNG.

Patches per second = pairs delivered in batches of 16 over one epoch (after one warm-up
epoch; workers persist), for ``num_workers`` 0 and 2, ``torch.set_num_threads(1)``; batches in index
order, and for the zarr layouts and PNG also shuffled (a new random order per epoch, as
training draws them: a batch then touches up to 16 chunks of 8 tiles).

    .venv/bin/python benchmarks/data_patch_throughput.py [--n 512]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from stainbench.bench.limits import machine_load
from stainbench.data.augment import (
    apply_params,
    crop,
    sample_params,
    sample_params_batch,
    transform_batch,
)
from stainbench.data.datasets import PairedPatchDataset
from stainbench.data.demo import load_source, render_stains
from stainbench.data.loader import PatchLoader
from stainbench.data.store import create_store
from stainbench.data.transforms import NORM_SUFFIX, Normalization, normalize_batch
from stainbench.data.writer import compressor, finalize_with_stats

TILE = 256
#: The pipelines measured for every source (see the module docstring); the baseline is PNG
#: through ``batch``.
PIPELINES = ("item", "batch", "loader")


RANGE = Normalization("range", "A", (127.5,) * 3, (127.5,) * 3)


#: where results go unless --out says otherwise (never the committed docs/benchmarks/)
RESULTS_DIR = Path(tempfile.gettempdir()) / "stainbench-benchmarks"


def fill_items(
    indices: list[int],
    seed: int,
    tiles_of: Callable[[str], np.ndarray],
    norm_params: np.ndarray,
    out: dict[str, np.ndarray],
) -> None:
    """Write the batch of ``indices`` into ``out`` as the store's datasets do: the same random
    crop/flip/rotation per index (seeded like theirs, drawn with the same compiled
    ``default_rng``), one compiled transform pass per domain over ``tiles_of(domain)`` (the
    batch's ``(n, TILE, TILE, 3)`` uint8 tiles)."""
    params = sample_params_batch([(seed, 0, i) for i in indices], len(indices), TILE, TILE, TILE)
    for d in ("A", "B"):
        transform_batch(tiles_of(d), params, TILE, out=out[d])
        out[d + NORM_SUFFIX][:] = norm_params


def layout(n: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The batch layout of the benchmark's sources (as the store's datasets')."""
    u8, f32 = np.dtype(np.uint8), np.dtype(np.float32)
    return {
        "A": ((n, 3, TILE, TILE), u8),
        "A_norm": ((n, 2, 3), f32),
        "B": ((n, 3, TILE, TILE), u8),
        "B_norm": ((n, 2, 3), f32),
    }


class _Source(Dataset):
    """Items through ``fill_batch`` (as the store's datasets), for both loaders."""

    fills_batches = True

    def batch_layout(self, n: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return layout(n)

    def fill_batch(self, indices: list[int], out: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        arrays = {k: np.empty(s, dtype=d) for k, (s, d) in layout(len(indices)).items()}
        self.fill_batch(indices, arrays)
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        return [{k: t[j] for k, t in tensors.items()} for j in range(len(indices))]


class PngPairs(_Source):
    """The PNG baseline: decode A and B, the same augmentation and batch step as the store's
    datasets; the same items (raw ``(3, P, P)`` uint8 + normalization parameters)."""

    def __init__(self, folder: Path, n: int, seed: int = 0) -> None:
        self.folder, self.n, self.seed = folder, n, seed
        self.params = RANGE.params()

    def __len__(self) -> int:
        return self.n

    def fill_batch(self, indices: list[int], out: dict[str, np.ndarray]) -> None:
        def decoded(d: str) -> np.ndarray:
            tiles = np.empty((len(indices), TILE, TILE, 3), dtype=np.uint8)
            for j, i in enumerate(indices):
                with Image.open(self.folder / d / f"{i:05d}.png") as im:
                    tiles[j] = np.asarray(im)
            return tiles

        fill_items(indices, self.seed, decoded, self.params, out)


class InMemoryPairs(_Source):
    """The same tiles already decoded in memory, the same batch step: the ceiling of any
    pipeline that delivers these batches through the same loader (no reading, no decoding)."""

    def __init__(self, a: np.ndarray, b: np.ndarray, seed: int = 0) -> None:
        self.tiles, self.seed = {"A": a, "B": b}, seed
        self.params = RANGE.params()

    def __len__(self) -> int:
        return len(self.tiles["A"])

    def fill_batch(self, indices: list[int], out: dict[str, np.ndarray]) -> None:
        fill_items(indices, self.seed, lambda d: self.tiles[d][indices], self.params, out)


class PerItem(Dataset):
    """The pipeline before: one item at a time (no batched fetch), each flipped/rotated and
    made channels-first with numpy in the dataset (same pixels)."""

    def __init__(self, ds: Dataset, seed: int = 0) -> None:
        self.ds, self.seed = ds, seed

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        params = sample_params(np.random.default_rng([self.seed, 0, i]), TILE, TILE, TILE)
        out = {}
        for d in ("A", "B"):
            raw = self._tile(d, i)
            out[d] = torch.from_numpy(apply_params(crop(raw, params, TILE), params))
            out[d + NORM_SUFFIX] = torch.from_numpy(RANGE.params())
        return out

    def _tile(self, d: str, i: int) -> np.ndarray:
        ds = self.ds
        if isinstance(ds, InMemoryPairs):
            return ds.tiles[d][i]
        if isinstance(ds, PngPairs):
            with Image.open(ds.folder / d / f"{i:05d}.png") as im:
                return np.asarray(im)
        reader = ds._reader(d)  # type: ignore[attr-defined]
        if reader is not None:
            return reader.read_tile(i)
        return np.asarray(ds.store.array("train", d)[i])  # type: ignore[attr-defined]


def torch_normalize(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch normalization before this change: torch's float32 conversion, subtraction and
    division (three passes), bit-identical to ``normalize_batch``."""
    out = {}
    for d in ("A", "B"):
        p = batch[d + NORM_SUFFIX]
        x = batch[d].to(torch.float32)
        x.sub_(p[:, 0, :, None, None])
        out[d] = x.div_(p[:, 1, :, None, None])
    return out


def make_tiles(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    src = load_source()
    h_only = render_stains(src, h_only=True)
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, 512 - TILE + 1, n)
    xs = rng.integers(0, 512 - TILE + 1, n)
    a = np.stack([h_only[y : y + TILE, x : x + TILE] for y, x in zip(ys, xs, strict=True)])
    b = np.stack([src[y : y + TILE, x : x + TILE] for y, x in zip(ys, xs, strict=True)])
    return a, b


def write_store(
    path: Path, a: np.ndarray, b: np.ndarray, chunk_n: int, shard_n: int | None
) -> None:
    group = create_store(path, "paired", force=True)
    for d, data in (("A", a), ("B", b)):
        arr = group.create_array(
            f"train/{d}",
            shape=data.shape,
            dtype="uint8",
            chunks=(chunk_n, TILE, TILE, 3),
            shards=(shard_n, TILE, TILE, 3) if shard_n else None,
            compressors=compressor(),
            fill_value=0,
        )
        step = shard_n or chunk_n
        for s in range(0, len(data), step * 8):
            arr[s : s + step * 8] = data[s : s + step * 8]
    finalize_with_stats(group, path, "paired", {"benchmark": "patch throughput"})


def measure(ds: Dataset, workers: int, n: int, shuffle: bool, pipeline: str) -> float:
    """Pairs/s delivered as normalized float32 ``(B, 3, 256, 256)`` batches."""
    generator = torch.Generator().manual_seed(0)
    if pipeline == "loader":
        loader: Any = PatchLoader(ds, 16, shuffle, num_workers=workers, generator=generator)
        step: Callable[[Any], dict[str, torch.Tensor]] = _already_normalized
    else:
        loader = DataLoader(
            ds,
            batch_size=16,
            shuffle=shuffle,
            num_workers=workers,
            persistent_workers=workers > 0,
            generator=generator,
        )
        step = torch_normalize if pipeline == "item" else normalize_batch
    try:
        for _ in loader:  # warm-up epoch (worker start, page cache, first decode, compilation)
            pass
        start = time.perf_counter()
        count = 0
        for batch in loader:
            x = step(batch)
            assert x["A"].dtype == torch.float32 and x["A"].shape[1:] == (3, TILE, TILE)
            count += int(x["A"].shape[0])
        elapsed = time.perf_counter() - start
    finally:
        if pipeline == "loader":
            loader.close()
    assert count == n
    return count / elapsed


def _already_normalized(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


def _dataset(make: Callable[[], Dataset], pipeline: str) -> Dataset:
    return PerItem(make()) if pipeline == "item" else make()


def check_same_batches(cases: dict, n: int) -> None:
    """Every source and every pipeline give bit-identical normalized batches (same seed), the
    loader with 0 and 2 workers."""
    ref = None
    for name, make in cases.items():
        for pipeline, workers in (("batch", 0), ("item", 0), ("loader", 0), ("loader", 2)):
            ds = _dataset(make, pipeline)
            if pipeline == "loader":
                with PatchLoader(ds, min(16, n), num_workers=workers) as loader:
                    x = {k: v.clone() for k, v in next(iter(loader)).items()}
            else:
                batch = next(iter(DataLoader(ds, batch_size=min(16, n))))
                x = torch_normalize(batch) if pipeline == "item" else normalize_batch(batch)
            if ref is None:
                ref = x
            for d in ("A", "B"):
                same = torch.equal(x[d].view(torch.int32), ref[d].view(torch.int32))
                assert same, f"{name} ({pipeline}, {workers} workers): batch differs"


def raw_reads(work: Path, n: int) -> dict[str, float]:
    """uint8 tiles/s of decoding alone (one process, no augmentation, normalization, batching):
    Pillow PNG decode vs the store's fast tile reader vs zarr indexing, same tiles."""
    import zarr

    from stainbench.data.fastread import ChunkReader

    reader = ChunkReader.for_array(work / "sharded.zarr" / "train" / "A")
    arr = zarr.open_array(str(work / "sharded.zarr" / "train" / "A"), mode="r")
    assert reader is not None
    readers = {
        "png (Pillow)": lambda i: np.asarray(Image.open(work / "png" / "A" / f"{i:05d}.png")),
        "zarr layout, fast reader": reader.read_tile,
        "zarr layout, zarr API": lambda i: arr[i],
    }
    out = {}
    for name, read in readers.items():
        for i in range(min(n, 32)):  # warm-up
            read(i)
        start = time.perf_counter()
        for i in range(n):
            read(i)
        out[name] = n / (time.perf_counter() - start)
        print(f"decode only, {name:28s}: {out[name]:8.1f} tiles/s", flush=True)
    return out


def stage_costs(cases: dict, n: int) -> dict[str, dict[str, float]]:
    """ms per pair of each stage of the loader pipeline, one process, batches of 16 in order:
    drawing the crop/flip/rotation, reading/decoding the two tiles into a reused buffer (PNG:
    Pillow; store: the fast reader), the compiled transform into the batch, the compiled
    normalization into a reused float32 batch."""
    from stainbench.data.loader import _normalize_into

    out = {}
    for name in ("png", "zarr 1x256x256x3 (sharded 64), fast reader"):
        ds = cases[name]()
        arrays = {k: np.empty(sh, dtype=dt) for k, (sh, dt) in layout(16).items()}
        for d in ("A", "B"):
            arrays[d + NORM_SUFFIX][:] = RANGE.params()
        floats = {d: torch.empty((16, 3, TILE, TILE)) for d in ("A", "B")}
        buf = {d: np.empty((16, TILE, TILE, 3), dtype=np.uint8) for d in ("A", "B")}
        stages = {"draw": 0.0, "read+decode": 0.0, "transform": 0.0, "normalize": 0.0}
        for _rep in range(2):  # the first pass warms up
            for key in stages:
                stages[key] = 0.0
            for s in range(0, n - n % 16, 16):
                idx = list(range(s, s + 16))
                t0 = time.perf_counter()
                params = sample_params_batch([(0, 0, i) for i in idx], 16, TILE, TILE, TILE)
                t1 = time.perf_counter()
                for d in ("A", "B"):
                    if isinstance(ds, PngPairs):
                        for j, i in enumerate(idx):
                            with Image.open(ds.folder / d / f"{i:05d}.png") as im:
                                buf[d][j] = np.asarray(im)
                    else:
                        buf[d] = ds._tiles(d, idx)
                t2 = time.perf_counter()
                for d in ("A", "B"):
                    transform_batch(buf[d], params, TILE, out=arrays[d])
                t3 = time.perf_counter()
                for d in ("A", "B"):
                    _normalize_into(arrays[d], arrays[d + "_norm"], floats[d])
                t4 = time.perf_counter()
                for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    stages[key] += dt
        out[name] = {k: v / (n - n % 16) * 1e3 for k, v in stages.items()}
        print(f"ms/pair, {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in out[name].items()))
    return out


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="tile pairs")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / "data_patch.json",
        help="JSON result; default under the temp folder (docs/benchmarks/ holds the "
        "committed runs)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    uptime_before = machine_load()
    print(uptime_before, flush=True)
    work = Path(tempfile.mkdtemp(prefix="sb_patch_"))
    try:
        a, b = make_tiles(args.n, 0)
        for d, data in (("A", a), ("B", b)):
            (work / "png" / d).mkdir(parents=True)
            for i, t in enumerate(data):
                Image.fromarray(t).save(work / "png" / d / f"{i:05d}.png")
        write_store(work / "sharded.zarr", a, b, 1, 64)
        write_store(work / "chunk8.zarr", a, b, 8, None)
        cases = {
            "png": lambda: PngPairs(work / "png", args.n),
            "zarr 1x256x256x3 (sharded 64), fast reader": lambda: PairedPatchDataset(
                work / "sharded.zarr", "train", TILE, augment=True
            ),
            "zarr 1x256x256x3 (sharded 64), zarr API": lambda: _slow(
                PairedPatchDataset(work / "sharded.zarr", "train", TILE, augment=True)
            ),
            "zarr 8x256x256x3, fast reader": lambda: PairedPatchDataset(
                work / "chunk8.zarr", "train", TILE, augment=True
            ),
            "in memory (no reading or decoding)": lambda: InMemoryPairs(a, b),
        }
        sizes = {
            "png": du(work / "png"),
            "zarr 1x256x256x3 (sharded 64), fast reader": du(work / "sharded.zarr"),
            "zarr 1x256x256x3 (sharded 64), zarr API": du(work / "sharded.zarr"),
            "zarr 8x256x256x3, fast reader": du(work / "chunk8.zarr"),
            "in memory (no reading or decoding)": 0,
        }
        decode = raw_reads(work, args.n)
        check_same_batches(cases, args.n)
        stages = stage_costs(cases, args.n)
        results = []
        for workers in (0, 2):
            for shuffle in (False, True):
                for name, make in cases.items():
                    if shuffle and ("zarr API" in name or "memory" in name):
                        continue
                    for pipeline in PIPELINES:
                        rate = measure(_dataset(make, pipeline), workers, args.n, shuffle, pipeline)
                        order = "shuffled" if shuffle else "in order"
                        results.append(
                            {
                                "case": name,
                                "pipeline": pipeline,
                                "order": order,
                                "workers": workers,
                                "patches_per_s": rate,
                            }
                        )
                        print(
                            f"{name:45s} {pipeline:6s} {order:8s} workers={workers}: "
                            f"{rate:8.1f} pairs/s",
                            flush=True,
                        )
        for r in results:
            for base in PIPELINES:
                png = next(
                    x["patches_per_s"]
                    for x in results
                    if x["case"] == "png"
                    and x["workers"] == r["workers"]
                    and x["order"] == r["order"]
                    and x["pipeline"] == base
                )
                r[f"x_png_{base}"] = r["patches_per_s"] / png
        report = {
            "benchmark": "paired patch throughput, 256x256 RGB uint8, batch 16, normalized batches",
            "command": "benchmarks/data_patch_throughput.py --n " + str(args.n),
            "n_pairs": args.n,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
            "uptime_before": uptime_before,
            "uptime_after": machine_load(),
            "bytes_on_disk": sizes,
            "decode_only_tiles_per_s": decode,
            "stage_ms_per_pair": stages,
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
        print(json.dumps({k: report[k] for k in ("uptime_after", "bytes_on_disk")}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _slow(ds: PairedPatchDataset) -> PairedPatchDataset:
    ds.fast_read = False
    return ds


if __name__ == "__main__":
    main()
