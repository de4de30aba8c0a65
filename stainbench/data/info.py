"""``stainbench data info``: what a store holds, without loading its data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stainbench.data.store import read_attrs
from stainbench.errors import DataError


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


def describe_store(path: str | Path) -> StoreInfo:
    """Read the attributes and array metadata of the store at ``path``."""
    p = Path(path)
    attrs = read_attrs(p)
    if attrs is None:
        raise DataError(f"{p}: not a stainbench store")
    import zarr

    group = zarr.open_group(str(p), mode="r")
    arrays = []
    for key, arr in sorted(group.arrays(), key=lambda kv: kv[0]):
        arrays.append(_array_info(p, key, arr))
    for key, sub in sorted(group.groups(), key=lambda kv: kv[0]):
        arrays.extend(_walk(p, key, sub))
    manifest = dict(attrs.get("manifest") or {})
    return StoreInfo(
        path=p,
        kind=str(attrs.get("kind")),
        schema_version=attrs.get("schema_version"),
        complete=attrs.get("complete") is True,
        manifest_hash=attrs.get("manifest_hash"),
        arrays=sorted(arrays, key=lambda a: a.key),
        manifest=manifest,
        stats=dict(attrs.get("stats") or {}),
        failures=list(manifest.get("failures") or []),
    )


def _walk(root: Path, prefix: str, group: Any) -> list[ArrayInfo]:
    out = [_array_info(root, f"{prefix}/{k}", a) for k, a in group.arrays()]
    for k, sub in group.groups():
        out.extend(_walk(root, f"{prefix}/{k}", sub))
    return out


def _array_info(root: Path, key: str, arr: Any) -> ArrayInfo:
    folder = root / key
    stored = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    shards = getattr(arr, "shards", None)
    return ArrayInfo(
        key=key,
        shape=tuple(int(s) for s in arr.shape),
        dtype=str(arr.dtype),
        chunks=tuple(int(c) for c in arr.chunks),
        shards=tuple(int(s) for s in shards) if shards else None,
        nbytes=int(arr.nbytes),
        stored_bytes=int(stored),
    )
