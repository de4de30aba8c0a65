"""Paired patch throughput: the zarr store (two chunk shapes) against a folder of PNG files.

The same N tile pairs (256 x 256 RGB uint8, random crops of scikit-image's IHC field: A the
hematoxylin-only rendering, B the original) are written as

- ``png``: ``A/<i>.png`` and ``B/<i>.png`` (Pillow, default compression), read by a dataset
  that decodes both PNGs per item and applies the same crop/flip/rotation as the store's;
- ``zarr 1x256x256x3 (sharded 64)``: the store's own layout (one tile per chunk, 64 tiles per
  shard file), read by ``PairedPatchDataset`` (fast tile reader);
- ``zarr 8x256x256x3``: eight tiles per chunk, read by ``PairedPatchDataset`` through zarr
  (the fast reader only handles one tile per chunk), so each item decodes 8 tiles per side;
- ``zarr 1x256x256x3 via zarr API``: the store's layout with the fast reader switched off.

Two item pipelines, measured in the same run for every source:

- ``raw`` (the datasets' contract): uint8 items, collated, then ``normalize_batch`` on each
  batch in the consuming process (what the training loop does);
- ``float`` (the contract before): each item normalized to float32 (``Normalization.forward``
  in the dataset, i.e. in the worker), float32 batches collated.

Patches per second = pairs delivered as normalized float32 batches by a
``DataLoader(batch_size=16)`` over one epoch (after one warm-up epoch), for ``num_workers``
0 and 2, ``torch.set_num_threads(1)``.

    .venv/bin/python benchmarks/data_patch_throughput.py [--n 512]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from stainbench.data.augment import apply_params, sample_params
from stainbench.data.datasets import PairedPatchDataset
from stainbench.data.demo import load_source, render_stains
from stainbench.data.store import create_store
from stainbench.data.transforms import NORM_SUFFIX, Normalization, normalize_batch
from stainbench.data.writer import compressor, finalize_with_stats

TILE = 256


RANGE = Normalization("range", "A", (127.5,) * 3, (127.5,) * 3)


class PngPairs(Dataset):
    """The PNG baseline: decode A and B, same augmentation as the store; raw uint8 items with
    their normalization parameters, as ``PairedPatchDataset`` returns them."""

    def __init__(self, folder: Path, n: int, seed: int = 0) -> None:
        self.folder, self.n, self.seed = folder, n, seed
        self.params = torch.from_numpy(RANGE.params())

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 0, i])
        params = sample_params(rng, TILE, TILE, TILE)
        out = {}
        for d in ("A", "B"):
            with Image.open(self.folder / d / f"{i:05d}.png") as im:
                raw = np.asarray(im)
            out[d] = torch.from_numpy(apply_params(raw, params))
            out[d + NORM_SUFFIX] = self.params
        return out


class FloatItems(Dataset):
    """The previous contract: every item normalized to float32 in the dataset (numpy)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.ds[i]  # every source here uses the range mode
        return {d: torch.from_numpy(RANGE.forward(item[d].numpy())) for d in ("A", "B")}


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


def measure(ds: Dataset, workers: int, n: int) -> float:
    """Pairs/s delivered as normalized float32 batches (raw items: ``normalize_batch`` here)."""
    loader = DataLoader(ds, batch_size=16, num_workers=workers, persistent_workers=workers > 0)
    for _ in loader:  # warm-up epoch (worker start, page cache, first decode)
        pass
    start = time.perf_counter()
    count = 0
    for batch in loader:
        x = normalize_batch(batch)
        assert x["A"].dtype == torch.float32
        count += int(x["A"].shape[0])
    elapsed = time.perf_counter() - start
    assert count == n
    return count / elapsed


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


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="tile pairs")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/data_patch.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    uptime_before = _uptime()
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
            "zarr 8x256x256x3, zarr API": lambda: PairedPatchDataset(
                work / "chunk8.zarr", "train", TILE, augment=True
            ),
        }
        sizes = {
            "png": du(work / "png"),
            "zarr 1x256x256x3 (sharded 64), fast reader": du(work / "sharded.zarr"),
            "zarr 1x256x256x3 (sharded 64), zarr API": du(work / "sharded.zarr"),
            "zarr 8x256x256x3, zarr API": du(work / "chunk8.zarr"),
        }
        decode = raw_reads(work, args.n)
        results = []
        for workers in (0, 2):
            for name, make in cases.items():
                for items in ("float", "raw"):
                    ds = make() if items == "raw" else FloatItems(make())
                    rate = measure(ds, workers, args.n)
                    results.append(
                        {"case": name, "items": items, "workers": workers, "patches_per_s": rate}
                    )
                    print(
                        f"{name:45s} {items:5s} workers={workers}: {rate:8.1f} pairs/s", flush=True
                    )
        for r in results:
            for base in ("float", "raw"):
                png = next(
                    x["patches_per_s"]
                    for x in results
                    if x["case"] == "png" and x["workers"] == r["workers"] and x["items"] == base
                )
                r[f"x_png_{base}"] = r["patches_per_s"] / png
        report = {
            "benchmark": "paired patch throughput, 256x256 RGB uint8, batch 16, normalized batches",
            "n_pairs": args.n,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
            "uptime_before": uptime_before,
            "uptime_after": subprocess.run(
                ["uptime"], capture_output=True, text=True
            ).stdout.strip(),
            "bytes_on_disk": sizes,
            "decode_only_tiles_per_s": decode,
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(json.dumps({k: report[k] for k in ("uptime_after", "bytes_on_disk")}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _slow(ds: PairedPatchDataset) -> PairedPatchDataset:
    ds.fast_read = False
    return ds


if __name__ == "__main__":
    main()
