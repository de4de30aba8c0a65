"""``stainbench data ingest``: image folders and volumes into one zarr store.

Layouts (``SOURCE`` is a folder):

- ``paired``: ``SOURCE/A/`` and ``SOURCE/B/``, files matched by name without extension;
- ``aligned``: ``SOURCE/`` holds side-by-side ``AB`` images (pix2pix "aligned"), split at
  half width;
- ``unpaired``: ``SOURCE/A/`` and ``SOURCE/B/`` of any (unequal) sizes;
- ``volume``: ``SOURCE/A/`` (and optionally ``SOURCE/B/``, matched by name) holding
  multi-page TIFF files or zarr / OME-Zarr arrays; or ``SOURCE`` is one volume (domain A).

Tiles are decoded one file at a time and appended to the store in shard-sized batches;
volumes are copied block by block (one chunk-row slab at a time). The store is marked
``complete`` only after everything, statistics included, has been written.

The store is written into a hidden sibling folder and moved to ``--out`` only at the end
(:func:`stainbench.data.store.staged_store`): a failure or Ctrl-C leaves an existing store
at ``--out`` untouched. zarr does not store all-zero chunks; the number of such chunks of
every volume array is recorded (attribute ``empty_chunks``), so ``data info`` can tell a
deleted chunk file from an empty one (tile arrays are checked against per-tile statistics).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stainbench import __version__
from stainbench.data.io import ImageData, VolumeSource, open_volume, read_image, tile_format
from stainbench.data.stats import StatsAccumulator
from stainbench.data.store import ATTR, EMPTY_CHUNKS_KEY, staged_store
from stainbench.data.writer import (
    TILES_PER_SHARD,
    create_tile_array,
    create_volume_array,
    finalize_with_stats,
)
from stainbench.errors import DataError

LAYOUTS = ("paired", "aligned", "unpaired", "volume")
SPLIT_METHODS = ("auto", "file", "region")
#: Default volume chunk (z, y, x): a 256x256 patch of a slice touches 1-4 chunks, a 3D patch
#: of depth <= 8 one or two chunk layers; ~0.5 MB per chunk for uint8 RGB.
DEFAULT_VOLUME_CHUNKS = (8, 256, 256)
#: Largest block read from a volume source at once (bounds memory).
MAX_BLOCK_BYTES = 128 << 20

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class IngestOptions:
    """Options of one ingestion (see ``stainbench data ingest --help``)."""

    layout: str = "paired"
    val_fraction: float = 0.1
    seed: int = 0
    on_error: str = "fail"
    split_by: str = "auto"
    tile: int | None = None
    chunks: tuple[int, int, int] | None = None
    shards: tuple[int, int, int] | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise DataError(f"unknown layout {self.layout!r} (use {', '.join(LAYOUTS)})")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"--val-fraction {self.val_fraction}: must be in [0, 1)")
        if self.on_error not in ("fail", "skip"):
            raise DataError(f"--on-error {self.on_error!r}: use fail or skip")
        if self.split_by not in SPLIT_METHODS:
            raise DataError(f"--split-by {self.split_by!r}: use {', '.join(SPLIT_METHODS)}")
        if self.tile is not None and self.tile < 1:
            raise DataError(f"--tile {self.tile}: must be >= 1")


@dataclass
class IngestResult:
    """What was written: counts per split and domain, failures, the store's identity."""

    path: Path
    kind: str
    counts: dict[str, dict[str, int]]
    failures: list[dict[str, str]]
    conversions: list[dict[str, str]]
    manifest_hash: str
    seconds: float
    split_method: str
    sources: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class _Failures:
    """Collects failed inputs; raises at once with ``on_error=fail``."""

    def __init__(self, on_error: str) -> None:
        self.on_error = on_error
        self.items: list[dict[str, str]] = []

    def add(self, path: Path | str, reason: str) -> None:
        if self.on_error == "fail":
            raise DataError(f"{path}: {reason} (use --on-error skip to skip such inputs)")
        self.items.append({"path": str(path), "reason": reason})


def ingest(
    source: str | Path,
    out: str | Path,
    options: IngestOptions,
    progress: Progress | None = None,
) -> IngestResult:
    """Ingest ``source`` into the store ``out``; returns what was written.

    The store is written next to ``out`` and moved into place only when complete: on any
    error (a bad input with ``on_error="fail"``, a split left empty, Ctrl-C) nothing is
    left behind and an existing store at ``out`` (replaced only with ``force``) is kept
    as it was. A killed process (SIGKILL, power loss) can leave a hidden
    ``.NAME.tmp-XXXX`` folder next to ``out``; it is never read and can be deleted.
    """
    src = Path(source)
    if not src.exists():
        raise DataError(f"{src}: no such file or directory")
    out_path = Path(out)
    try:
        if out_path.resolve().is_relative_to(src.resolve()) and src.is_dir():
            raise DataError(f"{out_path}: the store must not be inside the source folder {src}")
    except OSError:
        pass
    start = time.perf_counter()
    if options.layout == "volume":
        plan: Any = _plan_volumes(src, options)
        kind = "volume"
    else:
        plan = _plan_tiles(src, options)
        kind = "unpaired" if options.layout == "unpaired" else "paired"
    with staged_store(out_path, kind, force=options.force) as (group, staging):
        if kind == "volume":
            result = _write_volumes(group, staging, plan, options, progress)
        else:
            result = _write_tiles(group, staging, kind, plan, options, progress)
    result.path = out_path
    result.seconds = time.perf_counter() - start
    return result


def _check_promised_splits(
    source: Path, promised: set[str], written: set[str], failures: _Failures, what: str
) -> None:
    """Raise when a split the split settings promised holds nothing (its inputs failed)."""
    for split in sorted(promised - written):
        failed = [f["path"] for f in failures.items]
        listed = ", ".join(failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        raise DataError(
            f"{source}: split {split!r} would be empty: all {what} assigned to it failed "
            f"({listed or 'none listed'}); fix or remove them, pass --seed N for another "
            f"split, or --val-fraction 0 for no validation split"
        )


# --------------------------------------------------------------------------------------------
# Tiles: planning


@dataclass
class _Unit:
    """One input of the split: a pair (A, B paths), one file of one domain, or an AB file."""

    name: str
    paths: dict[str, Path]


@dataclass
class _TilePlan:
    source: Path
    units: dict[str, list[_Unit]]  # group name ("pairs" / "A" / "B") -> units
    split: dict[str, dict[str, str]]  # group -> unit name -> split ("train"/"val"/"both")
    method: str
    failures: _Failures
    ignored: list[str]


def _list_images(folder: Path, failures: _Failures) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or tile_format(p) is None:
            continue
        if p.stem in found:
            failures.add(p, f"same name as {found[p.stem].name}; names must be unique")
            continue
        found[p.stem] = p
    if not found:
        raise DataError(f"{folder}: no PNG, JPEG or TIFF files")
    return found


def _ignored(folder: Path) -> list[str]:
    return sorted(
        str(p)
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and tile_format(p) is None
    )


def _plan_tiles(src: Path, options: IngestOptions) -> _TilePlan:
    failures = _Failures(options.on_error)
    ignored: list[str] = []
    units: dict[str, list[_Unit]] = {}
    if options.layout == "aligned":
        files = _list_images(src, failures)
        ignored += _ignored(src)
        units["pairs"] = [_Unit(stem, {"AB": p}) for stem, p in files.items()]
    else:
        for d in ("A", "B"):
            if not (src / d).is_dir():
                raise DataError(
                    f"{src / d}: not a folder ({options.layout} layout needs {src}/A and {src}/B)"
                )
        a = _list_images(src / "A", failures)
        b = _list_images(src / "B", failures)
        ignored += _ignored(src / "A") + _ignored(src / "B")
        if options.layout == "paired":
            for stem in sorted(set(a) - set(b)):
                failures.add(a[stem], f"no partner in {src / 'B'} (pairs match by file name)")
            for stem in sorted(set(b) - set(a)):
                failures.add(b[stem], f"no partner in {src / 'A'} (pairs match by file name)")
            common = sorted(set(a) & set(b))
            if not common:
                raise DataError(f"{src}: no file name appears in both A/ and B/")
            units["pairs"] = [_Unit(s, {"A": a[s], "B": b[s]}) for s in common]
        else:
            units["A"] = [_Unit(s, {"A": p}) for s, p in a.items()]
            units["B"] = [_Unit(s, {"B": p}) for s, p in b.items()]
    method = options.split_by
    if method == "auto":
        method = "file" if all(len(u) >= 2 for u in units.values()) else "region"
    split = {g: _assign_splits([u.name for u in us], options, method) for g, us in units.items()}
    return _TilePlan(src, units, split, method, failures, ignored)


def _assign_splits(names: list[str], options: IngestOptions, method: str) -> dict[str, str]:
    """Seeded split of whole inputs (``file``) or of every input by rows (``region``)."""
    if method == "region" or options.val_fraction == 0:
        return {n: ("both" if options.val_fraction > 0 else "train") for n in names}
    if len(names) < 2:
        raise DataError(f"only {len(names)} input(s): cannot split by file; use --split-by region")
    n_val = min(len(names) - 1, max(1, round(options.val_fraction * len(names))))
    order = np.random.default_rng(options.seed).permutation(len(names))
    val = {names[i] for i in order[:n_val]}
    return {n: ("val" if n in val else "train") for n in names}


# --------------------------------------------------------------------------------------------
# Tiles: writing


class _Appender:
    """Appends tiles ``(k, H, W, C)`` to one array in shard-sized batches."""

    def __init__(self, group: Any, split: str, domain: str, acc: StatsAccumulator) -> None:
        self.group, self.key = group, f"{split}/{domain}"
        self.split, self.domain, self.acc = split, domain, acc
        self.arr: Any = None
        self.first: str = ""
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.n = 0

    def check(self, tiles: np.ndarray, name: str) -> str | None:
        """Reason why ``tiles`` cannot join this array, or None."""
        if self.arr is None:
            return None
        want = self.arr.shape[1:]
        if tiles.shape[1:3] != want[:2]:
            return (
                f"size {tiles.shape[1]}x{tiles.shape[2]} differs from {want[0]}x{want[1]} of "
                f"{self.first}; pass --tile N to cut images into N x N tiles"
            )
        if tiles.shape[3] != want[2]:
            return f"{tiles.shape[3]} channel(s), but {self.first} has {want[2]}"
        if tiles.dtype != self.arr.dtype:
            return f"pixel type {tiles.dtype}, but {self.first} is {self.arr.dtype}"
        return None

    def add(self, tiles: np.ndarray, name: str) -> None:
        if self.arr is None:
            _, h, w, c = tiles.shape
            self.arr = create_tile_array(self.group, self.key, 0, h, w, c, tiles.dtype)
            self.first = name
        self.buffer.append(tiles)
        self.buffered += len(tiles)
        if self.buffered >= TILES_PER_SHARD:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        block = np.concatenate(self.buffer, axis=0)
        _, h, w, c = block.shape
        self.arr.resize((self.n + len(block), h, w, c))
        self.arr[self.n : self.n + len(block)] = block
        self.acc.add_tiles(self.split, self.domain, self.n, block)
        self.n += len(block)
        self.buffer, self.buffered = [], 0


def _cut(pixels: np.ndarray, tile: int | None) -> np.ndarray:
    """``(H, W, C)`` to ``(k, t, t, C)`` non-overlapping tiles (edges dropped), or ``(1, ...)``."""
    if tile is None:
        return pixels[None]
    h, w, c = pixels.shape
    ny, nx = h // tile, w // tile
    if ny == 0 or nx == 0:
        return np.zeros((0, tile, tile, c), pixels.dtype)
    cropped = pixels[: ny * tile, : nx * tile]
    return (
        cropped.reshape(ny, tile, nx, tile, c).transpose(0, 2, 1, 3, 4).reshape(-1, tile, tile, c)
    )


def _region_rows(height: int, options: IngestOptions) -> int:
    """Rows at the bottom of an image that go to validation with ``--split-by region``."""
    unit = options.tile or 1
    rows = max(unit, round(options.val_fraction * height / unit) * unit)
    return rows if height - rows >= unit else 0


def _write_tiles(
    group: Any,
    out: Path,
    kind: str,
    plan: _TilePlan,
    options: IngestOptions,
    progress: Progress | None,
) -> IngestResult:
    failures = plan.failures
    appenders: dict[tuple[str, str], _Appender] = {}
    acc = StatsAccumulator()
    sources: list[dict[str, Any]] = []
    conversions: list[dict[str, str]] = []
    formats: dict[str, int] = {}
    total = sum(len(us) for us in plan.units.values())
    done = 0

    def appender(split: str, domain: str) -> _Appender:
        key = (split, domain)
        if key not in appenders:
            appenders[key] = _Appender(group, split, domain, acc)
        return appenders[key]

    for group_name, units in plan.units.items():
        for unit in units:
            done += 1
            if progress is not None:
                progress("ingest", done, total)
            images = _read_unit(unit, failures)
            if images is None:
                continue
            parts = _split_parts(images, plan.split[group_name][unit.name], options)
            if parts is None:
                failures.add(
                    next(iter(unit.paths.values())),
                    f"too small to split by region with --val-fraction {options.val_fraction}",
                )
                continue
            placed = _place(parts, options, appender, unit, failures)
            if placed is None:
                continue
            for domain, img in images.items():
                formats[img.format] = formats.get(img.format, 0) + 1
                for c in img.conversions:
                    conversions.append({"path": str(img.path), "what": c})
                sources.append(
                    {
                        "path": str(img.path),
                        "sha256": img.sha256,
                        "domain": domain,
                        "format": img.format,
                        "mode": img.source_mode,
                        "shape": list(img.pixels.shape),
                        "dtype": img.pixels.dtype.name,
                        "split": placed,
                    }
                )
    for a in appenders.values():
        a.flush()
    domains = ("A", "B")
    counts: dict[str, dict[str, int]] = {}
    for (split, domain), a in sorted(appenders.items()):
        counts.setdefault(split, {})[domain] = a.n
    for split in counts:
        for d in domains:
            if counts[split].get(d, 0) == 0:
                raise DataError(
                    f"{plan.source}: no {d} tiles left in split {split!r} "
                    f"({len(failures.items)} input(s) failed)"
                )
    if "train" not in counts:
        raise DataError(f"{plan.source}: no training tiles were written")
    promised = {
        part
        for assigned in plan.split.values()
        for value in assigned.values()
        for part in (("train", "val") if value == "both" else (value,))
    }
    _check_promised_splits(plan.source, promised, set(counts), failures, "input(s)")
    manifest = {
        "created_by": "stainbench data ingest",
        "stainbench_version": __version__,
        "kind": kind,
        "layout": options.layout,
        "source": str(plan.source),
        "sources": sources,
        "formats": formats,
        "conversions": conversions,
        "failures": failures.items,
        "ignored": plan.ignored,
        "split": {
            "method": plan.method,
            "seed": options.seed,
            "val_fraction": options.val_fraction,
            "counts": counts,
        },
        "options": {"tile": options.tile, "on_error": options.on_error},
    }
    digest, _ = finalize_with_stats(group, out, kind, manifest, accumulated=acc)
    return IngestResult(
        out, kind, counts, failures.items, conversions, digest, 0.0, plan.method, len(sources)
    )


def _stats_progress(progress: Progress | None) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress("statistics", done, total)


def _read_unit(unit: _Unit, failures: _Failures) -> dict[str, ImageData] | None:
    """Decode a unit's files; A/B of a pair must have equal sizes. None if it failed."""
    images: dict[str, ImageData] = {}
    for domain, path in unit.paths.items():
        try:
            images[domain] = read_image(path)
        except DataError as exc:
            failures.add(path, _reason(exc, path))
            return None
    if "AB" in images:
        ab = images.pop("AB")
        w = ab.pixels.shape[1]
        if w % 2:
            failures.add(ab.path, f"odd width {w}: an aligned AB image must split in two halves")
            return None
        half = w // 2
        for d, sl in (("A", slice(0, half)), ("B", slice(half, w))):
            images[d] = ImageData(
                ab.path,
                ab.pixels[:, sl],
                ab.format,
                ab.source_mode,
                ab.sha256,
                [*ab.conversions, f"{d}: {'left' if d == 'A' else 'right'} half of an AB image"],
            )
        images["B"].conversions = [c for c in images["B"].conversions if c not in ab.conversions]
    if "A" in images and "B" in images:
        sa, sb = images["A"].pixels.shape[:2], images["B"].pixels.shape[:2]
        if sa != sb:
            failures.add(
                unit.paths.get("A", unit.paths.get("AB")),
                f"pair differs in size: A is {sa[0]}x{sa[1]}, B is {sb[0]}x{sb[1]}",
            )
            return None
    return images


def _reason(exc: DataError, path: Path) -> str:
    msg = str(exc)
    prefix = f"{path}: "
    return msg[len(prefix) :] if msg.startswith(prefix) else msg


def _split_parts(
    images: dict[str, ImageData], split: str, options: IngestOptions
) -> dict[str, dict[str, np.ndarray]] | None:
    """``{split: {domain: (H, W, C) pixels}}`` for a unit, cutting rows for a region split."""
    if split != "both":
        return {split: {d: img.pixels for d, img in images.items()}}
    out: dict[str, dict[str, np.ndarray]] = {"train": {}, "val": {}}
    for d, img in images.items():
        h = img.pixels.shape[0]
        rows = _region_rows(h, options)
        if rows == 0:
            return None
        out["train"][d] = img.pixels[: h - rows]
        out["val"][d] = img.pixels[h - rows :]
    return out


def _place(
    parts: dict[str, dict[str, np.ndarray]],
    options: IngestOptions,
    appender: Callable[[str, str], _Appender],
    unit: _Unit,
    failures: _Failures,
) -> str | None:
    """Cut into tiles, check every target array accepts them, then append. Returns the split."""
    staged: list[tuple[_Appender, np.ndarray]] = []
    for split, domains in parts.items():
        for d, pixels in domains.items():
            tiles = _cut(pixels, options.tile)
            path = unit.paths.get(d, unit.paths.get("AB"))
            if len(tiles) == 0:
                failures.add(path, f"smaller than one {options.tile}x{options.tile} tile")
                return None
            target = appender(split, d)
            reason = target.check(tiles, str(path))
            if reason is not None:
                failures.add(path, reason)
                return None
            staged.append((target, tiles))
    for target, tiles in staged:
        target.add(tiles, str(unit.paths.get("A", unit.paths.get("AB", unit.paths.get("B")))))
    return "+".join(parts) if len(parts) > 1 else next(iter(parts))


# --------------------------------------------------------------------------------------------
# Volumes


@dataclass
class _VolumePlan:
    source: Path
    volumes: dict[str, dict[str, Path]]  # name -> domain -> path
    split: dict[str, str]  # name -> "train" / "val" / "both"
    method: str
    failures: _Failures


def _volume_name(p: Path) -> str:
    name = p.name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "volume"


def _list_volumes(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        is_tiff = p.is_file() and p.suffix.lower() in (".tif", ".tiff")
        is_zarr = p.is_dir() and any((p / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))
        if is_tiff or is_zarr:
            found[_volume_name(p)] = p
    if not found:
        raise DataError(f"{folder}: no volumes (multi-page TIFF, zarr or OME-Zarr)")
    return found


def _plan_volumes(src: Path, options: IngestOptions) -> _VolumePlan:
    failures = _Failures(options.on_error)
    if (
        src.is_file()
        or (src / "zarr.json").exists()
        or (src / ".zarray").exists()
        or (src / ".zgroup").exists()
    ):
        volumes = {_volume_name(src): {"A": src}}
    else:
        if not (src / "A").is_dir():
            raise DataError(f"{src}: expected a volume, or a folder with A/ (and B/) volumes")
        a = _list_volumes(src / "A")
        b = _list_volumes(src / "B") if (src / "B").is_dir() else {}
        if b:
            for name in sorted(set(a) ^ set(b)):
                side = "A" if name in a else "B"
                failures.add((a if side == "A" else b)[name], "no partner volume of that name")
            names = sorted(set(a) & set(b))
            if not names:
                raise DataError(f"{src}: no volume name appears in both A/ and B/")
            volumes = {n: {"A": a[n], "B": b[n]} for n in names}
        else:
            volumes = {n: {"A": p} for n, p in a.items()}
    method = options.split_by
    if method == "auto":
        method = "file" if len(volumes) >= 2 else "region"
    split = _assign_splits(sorted(volumes), options, method)
    return _VolumePlan(src, volumes, split, "volume" if method == "file" else method, failures)


def default_chunks(shape: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """Chunk (z, y, x) for patch sampling: :data:`DEFAULT_VOLUME_CHUNKS` clipped to the shape."""
    return tuple(min(c, s) for c, s in zip(DEFAULT_VOLUME_CHUNKS, shape[:3], strict=True))  # type: ignore[return-value]


def _check_chunks(
    name: str, shape: tuple[int, ...], chunks: tuple[int, int, int], shards: tuple[int, ...] | None
) -> None:
    if any(c < 1 for c in chunks):
        raise DataError(f"--chunks {chunks}: every chunk side must be >= 1")
    if any(c > s for c, s in zip(chunks, shape[:3], strict=True)):
        raise DataError(
            f"{name}: chunk shape {'x'.join(map(str, chunks))} is larger than the array "
            f"{'x'.join(map(str, shape[:3]))} (z, y, x)"
        )
    if shards is not None and any(s % c for s, c in zip(shards, chunks, strict=True)):
        raise DataError(f"--shards {shards}: each side must be a multiple of --chunks {chunks}")


def _write_volumes(
    group: Any,
    out: Path,
    plan: _VolumePlan,
    options: IngestOptions,
    progress: Progress | None,
) -> IngestResult:
    failures = plan.failures
    sources: list[dict[str, Any]] = []
    conversions: list[dict[str, str]] = []
    formats: dict[str, int] = {}
    refs: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    chunk_info: dict[str, Any] = {}
    opened: dict[str, dict[str, VolumeSource]] = {}
    empty: dict[str, int] = {}  # array key -> all-zero outer chunks (zarr stores no file)
    for name, paths in plan.volumes.items():
        try:
            srcs = {d: open_volume(p) for d, p in paths.items()}
        except DataError as exc:
            failures.add(next(iter(paths.values())), _reason(exc, next(iter(paths.values()))))
            continue
        shapes = {d: s.shape[:3] for d, s in srcs.items()}
        if len(set(shapes.values())) > 1:
            failures.add(paths["A"], f"A and B volumes differ in shape: {shapes}")
            continue
        opened[name] = srcs
    if not opened:
        raise DataError(f"{plan.source}: no volume could be read")
    total = sum(
        int(np.prod(s.shape)) * s.dtype.itemsize for srcs in opened.values() for s in srcs.values()
    )
    done = 0
    for name, srcs in opened.items():
        shape = next(iter(srcs.values())).shape
        chunks = options.chunks or default_chunks(shape)
        _check_chunks(name, shape, chunks, options.shards)
        outer = options.shards or chunks
        chunk_info[name] = {"chunks": list(chunks), "shards": list(options.shards or [])}
        for domain, vs in srcs.items():
            arr = create_volume_array(
                group,
                f"volumes/{name}/{domain}",
                vs.shape,
                vs.dtype,
                chunks=(*chunks, vs.shape[3]),
                shards=(*options.shards, vs.shape[3]) if options.shards else None,
            )
            key = f"volumes/{name}/{domain}"
            empty[key] = 0
            for z0, z1, y0, y1 in _volume_blocks(vs.shape, vs.dtype.itemsize, outer):
                block = vs.read(z0, z1, y0, y1)
                arr[z0:z1, y0:y1] = block
                empty[key] += _zero_chunks(block, outer)
                done += block.nbytes
                if progress is not None:
                    progress("ingest", done, total)
            vs.close()
            formats[vs.format] = formats.get(vs.format, 0) + 1
            conversions += [{"path": str(vs.path), "what": c} for c in vs.conversions]
            sources.append(
                {
                    "path": str(vs.path),
                    "sha256": _file_sha256(vs.path),
                    "domain": domain,
                    "volume": name,
                    "format": vs.format,
                    "shape": list(vs.shape),
                    "dtype": vs.dtype.name,
                }
            )
        split = plan.split[name]
        z = shape[0]
        if split == "both":
            z_val = max(1, round(options.val_fraction * z))
            if z - z_val < 1:
                raise DataError(
                    f"{name}: {z} slice(s) cannot be split by z; use several volumes or "
                    "--val-fraction 0"
                )
            refs["train"].append({"name": name, "z": [0, z - z_val]})
            refs["val"].append({"name": name, "z": [z - z_val, z]})
        else:
            refs[split].append({"name": name, "z": [0, z]})
    refs = {k: v for k, v in refs.items() if v}
    promised = {
        part
        for value in plan.split.values()
        for part in (("train", "val") if value == "both" else (value,))
    }
    _check_promised_splits(plan.source, promised, set(refs), failures, "volume(s)")
    manifest = {
        "created_by": "stainbench data ingest",
        "stainbench_version": __version__,
        "kind": "volume",
        "layout": "volume",
        "source": str(plan.source),
        "sources": sources,
        "formats": formats,
        "conversions": conversions,
        "failures": failures.items,
        "split": {
            "method": plan.method,
            "axis": "z" if plan.method == "region" else None,
            "seed": options.seed,
            "val_fraction": options.val_fraction,
            "volumes": refs,
        },
        "chunks": chunk_info,
    }
    group.attrs[ATTR] = {**dict(group.attrs[ATTR]), EMPTY_CHUNKS_KEY: empty}  # type: ignore[arg-type]
    digest, _ = finalize_with_stats(group, out, "volume", manifest, _stats_progress(progress))
    counts = {s: {"volumes": len(v)} for s, v in refs.items()}
    return IngestResult(
        out,
        "volume",
        counts,
        failures.items,
        conversions,
        digest,
        0.0,
        plan.method,
        len(sources),
        {"chunks": chunk_info},
    )


def _volume_blocks(
    shape: tuple[int, int, int, int], itemsize: int, outer: tuple[int, int, int]
) -> Iterator[tuple[int, int, int, int]]:
    """Blocks ``(z0, z1, y0, y1)`` aligned to the outer chunk (shard) grid, full x, each at
    most :data:`MAX_BLOCK_BYTES` unless a single chunk row is larger."""
    z, y, x, c = shape
    cz, cy, _ = outer
    row_bytes = cz * cy * x * c * itemsize
    rows = max(1, MAX_BLOCK_BYTES // max(1, row_bytes)) * cy
    for z0 in range(0, z, cz):
        for y0 in range(0, y, rows):
            yield z0, min(z, z0 + cz), y0, min(y, y0 + rows)


def _zero_chunks(block: np.ndarray, outer: tuple[int, int, int]) -> int:
    """All-zero outer chunks (shards) in ``block`` ``(z, y, X, C)``, which starts on the
    outer chunk grid and spans the full x axis; zarr writes no file for those."""
    cz, cy, cx = outer
    n = 0
    for z in range(0, block.shape[0], cz):
        for y in range(0, block.shape[1], cy):
            for x in range(0, block.shape[2], cx):
                if not block[z : z + cz, y : y + cy, x : x + cx].any():
                    n += 1
    return n


def _file_sha256(path: Path) -> str:
    """sha256 of a file, or of every file of a directory (sorted relative paths + bytes)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            while block := fh.read(8 << 20):
                digest.update(block)
    return digest.hexdigest()
