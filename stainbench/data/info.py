"""``stainbench data info``: what a store holds, without loading its data, and whether it
is intact: every array its manifest lists is there with the listed size, and every chunk
file the arrays need exists (a deleted chunk file would otherwise read back as zeros)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stainbench.data.store import EMPTY_CHUNKS_KEY, expected_arrays, read_attrs
from stainbench.errors import DataError

#: Index of ``max`` in the per-tile statistics fields (stainbench.data.stats.FIELDS).
_MAX_FIELD = 3


@dataclass(frozen=True)
class ArrayInfo:
    """One array: key in the store, shape, dtype, chunk and shard shapes, bytes."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    nbytes: int  # uncompressed
    stored_bytes: int  # on disk
    chunks_expected: int = 0  # chunk (or shard) files the array's shape needs
    chunks_present: int = 0  # of those, files that exist
    chunks_missing: int = 0  # absent files that are damage (their data is not all zero)
    chunks_empty: int = 0  # absent files known to be all-zero chunks (zarr stores none)
    chunks_unverified: int = 0  # absent files that may be all-zero chunks zarr did not store
    missing_keys: tuple[str, ...] = ()  # first few damaged chunk keys, e.g. "c/5/0/0/0"


@dataclass
class StoreInfo:
    """Summary of one store (complete or not)."""

    path: Path
    kind: str
    schema_version: Any
    complete: bool
    manifest_hash: str | None
    arrays: list[ArrayInfo]
    manifest: dict[str, Any]
    stats: dict[str, Any]
    failures: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # damage found, one line each

    @property
    def damaged(self) -> bool:
        """True when an array the manifest lists, or a chunk file with data, is missing."""
        return bool(self.problems)

    @property
    def stored_bytes(self) -> int:
        return sum(a.stored_bytes for a in self.arrays)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def find_stores(path: str | Path) -> list[Path]:
    """``path`` itself if it is a stainbench store, else the stores directly inside it
    (e.g. the directory written by ``stainbench data demo``)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such store or directory")
    if read_attrs(p) is not None:
        return [p]
    if p.is_dir():
        found = sorted(c for c in p.iterdir() if c.is_dir() and read_attrs(c) is not None)
        if found:
            return found
    raise DataError(f"{p}: not a stainbench store, and holds none")


def describe_store(path: str | Path, sizes: bool = True) -> StoreInfo:
    """Read the attributes and array metadata of the store at ``path`` and check a complete
    store for damage (``StoreInfo.problems``; see :func:`store_problems`). ``sizes=False``
    skips measuring the bytes on disk (one ``stat`` per file; ``stored_bytes`` is then 0)."""
    p = Path(path)
    attrs = read_attrs(p)
    if attrs is None:
        raise DataError(f"{p}: not a stainbench store")
    import zarr

    group = zarr.open_group(str(p), mode="r")
    complete = attrs.get("complete") is True
    found = sorted(_walk(group, ""), key=lambda kv: kv[0])
    arrays = [
        _array_info(p, key, arr, attrs if complete else None, group, sizes) for key, arr in found
    ]
    problems = _problems(p, attrs, arrays) if complete else []
    manifest = dict(attrs.get("manifest") or {})
    return StoreInfo(
        path=p,
        kind=str(attrs.get("kind")),
        schema_version=attrs.get("schema_version"),
        complete=complete,
        manifest_hash=attrs.get("manifest_hash"),
        arrays=arrays,
        manifest=manifest,
        stats=dict(attrs.get("stats") or {}),
        failures=list(manifest.get("failures") or []),
        problems=problems,
    )


def store_problems(path: str | Path) -> list[str]:
    """Damage of the complete store at ``path``, one line each (empty: intact).

    Reported: an array the manifest lists that is missing or has another length; chunk
    files missing from an array. zarr writes no file for an all-zero chunk, so an absent
    file is damage only when the store shows the chunk was not all zero: for tile arrays
    the stored per-tile statistics (maximum > 0), for volume arrays the count of all-zero
    chunks ``data ingest`` recorded, for per-tile statistics arrays the split statistics.
    Absent files nothing can vouch for (volumes written by older versions) are counted as
    ``chunks_unverified``, not as damage.
    """
    return describe_store(path, sizes=False).problems


def _problems(root: Path, attrs: Mapping[str, Any], arrays: list[ArrayInfo]) -> list[str]:
    by_key = {a.key: a for a in arrays}
    out = []
    for key, first in expected_arrays(attrs).items():
        a = by_key.get(key)
        if a is None:
            out.append(f"array {key} listed in the manifest is missing ({root / key})")
        elif first is not None and a.shape and a.shape[0] != first:
            out.append(f"array {key} holds {a.shape[0]} entries, the manifest lists {first}")
    for a in arrays:
        if a.chunks_missing:
            keys = ", ".join(a.missing_keys)
            more = "" if a.chunks_missing <= len(a.missing_keys) else ", ..."
            where = f" ({keys}{more})" if keys else ""
            out.append(
                f"array {a.key}: {a.chunks_missing} of {a.chunks_expected} chunk file(s) "
                f"missing{where}; their data would read as zeros"
            )
    return out


def _walk(group: Any, prefix: str) -> list[tuple[str, Any]]:
    out = [(f"{prefix}{k}", a) for k, a in group.arrays()]
    for k, sub in group.groups():
        out.extend(_walk(sub, f"{prefix}{k}/"))
    return out


def _files(folder: Path, sizes: bool = True) -> tuple[set[str], int]:
    """Relative paths (``/``-separated) of the files below ``folder``, and their bytes (0
    unless ``sizes``)."""
    names: set[str] = set()
    total = 0
    for root, _dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for name in files:
            if sizes:
                total += (Path(root) / name).stat().st_size
            names.add((rel / name).as_posix())
    return names, total


def absent_chunks(root: str | Path, key: str, arr: Any) -> int:
    """How many of array ``key``'s (outer) chunk files are absent under the store ``root``.

    Right after a writer filled the array, that is its number of all-zero chunks (zarr writes
    no file for them): what a writer records as the ``empty_chunks`` attribute.
    """
    files, _ = _files(Path(root) / key, sizes=False)
    outer = tuple(int(c) for c in (getattr(arr, "shards", None) or arr.chunks))
    grid = tuple(math.ceil(int(s) / c) for s, c in zip(arr.shape, outer, strict=True))
    encode = arr.metadata.chunk_key_encoding.encode_chunk_key
    return sum(encode(c) not in files for c in np.ndindex(*grid)) if all(grid) else 0


def _array_info(
    root: Path, key: str, arr: Any, attrs: Mapping[str, Any] | None, group: Any, sizes: bool = True
) -> ArrayInfo:
    folder = root / key
    files, stored = _files(folder, sizes)
    shards = getattr(arr, "shards", None)
    outer = tuple(int(c) for c in (shards or arr.chunks))
    shape = tuple(int(s) for s in arr.shape)
    grid = tuple(math.ceil(s / c) for s, c in zip(shape, outer, strict=True))
    encode = arr.metadata.chunk_key_encoding.encode_chunk_key
    absent = [c for c in np.ndindex(*grid) if encode(c) not in files] if all(grid) else []
    expected = math.prod(grid)
    missing, empty = _classify(absent, key, outer, arr, attrs, group)
    return ArrayInfo(
        key=key,
        shape=shape,
        dtype=str(arr.dtype),
        chunks=tuple(int(c) for c in arr.chunks),
        shards=tuple(int(s) for s in shards) if shards else None,
        nbytes=int(arr.nbytes),
        stored_bytes=int(stored),
        chunks_expected=expected,
        chunks_present=expected - len(absent),
        chunks_missing=len(missing),
        chunks_empty=empty,
        chunks_unverified=len(absent) - len(missing) - empty,
        missing_keys=tuple(encode(c) for c in missing[:3] if c is not None),
    )


def _classify(
    absent: list[tuple[int, ...]],
    key: str,
    outer: tuple[int, ...],
    arr: Any,
    attrs: Mapping[str, Any] | None,
    group: Any,
) -> tuple[list[tuple[int, ...] | None], int]:
    """Absent chunk files: ``(damaged, known_empty)``; the rest are unverified.

    A damaged entry is the chunk's coordinates, or None where only the count is known.
    """
    if not absent or attrs is None or np.any(np.asarray(arr.fill_value) != 0):
        return [], 0
    per_tile = _tile_max(key, attrs, group)
    if per_tile is not None:
        damaged = [
            c
            for c in absent
            if np.nanmax(per_tile[c[0] * outer[0] : (c[0] + 1) * outer[0]], initial=0.0) > 0
        ]
        return list(damaged), len(absent) - len(damaged)
    recorded = (attrs.get(EMPTY_CHUNKS_KEY) or {}).get(key)
    if isinstance(recorded, int):
        extra = max(0, len(absent) - recorded)
        return [None] * extra, len(absent) - extra
    if key.startswith("stats/"):
        split_domain = key.removeprefix("stats/").split("/")
        stats = (attrs.get("stats") or {}).get("splits") or {}
        if len(split_domain) == 2:
            ds = (stats.get(split_domain[0]) or {}).get(split_domain[1]) or {}
            if max(ds.get("max") or [0]) > 0:
                return list(absent), 0
    return [], 0


def _tile_max(key: str, attrs: Mapping[str, Any], group: Any) -> np.ndarray | None:
    """Per-tile maximum over channels ``(N,)`` of the tile array ``key``, from its stored
    statistics; None when there are none (volume stores, statistics arrays)."""
    if attrs.get("kind") == "volume" or key.startswith("stats/"):
        return None
    where = ((attrs.get("stats") or {}).get("per_image") or {}).get(key)
    if not where:
        return None
    try:
        values = np.asarray(group[where][...], dtype=np.float64)
    except (KeyError, ValueError, OSError):
        return None
    if values.ndim != 3 or values.shape[2] <= _MAX_FIELD:
        return None
    return values[:, :, _MAX_FIELD].max(axis=1)
