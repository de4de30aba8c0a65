"""The stainbench data store: one zarr v3 group per data set (see docs/DATA.md).

Layout of a tile store (``kind`` ``"paired"`` or ``"unpaired"``)::

    STORE.zarr/                 root group, attribute "stainbench" (schema, manifest, stats)
      train/A  train/B          uint8 or uint16 arrays (N, H, W, C), one tile per index
      val/A    val/B
      stats/train/A ...         float64 (N, C, 8) per-tile statistics (see stainbench.data.stats)

A volume store (``kind`` ``"volume"``) holds ``volumes/<name>/<domain>`` arrays (Z, Y, X, C)
and lists in ``manifest["split"]`` which volume (or which z range of it) belongs to which split.

Writers call :func:`create_store` (``complete`` is ``false`` from the first byte on), fill the
arrays, then :func:`finalize_store`, which writes manifest, hash and stats and only then sets
``complete`` to ``true``. Readers call :func:`open_store`, which refuses anything else.

:func:`staged_store` writes a new store into a hidden sibling folder and moves it into place
only when the writer finished, so replacing a store (``--force``) loses nothing on a failure
or Ctrl-C: ``stainbench data ingest`` uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stainbench.errors import DataError
from stainbench.jsonsafe import jsonable

if TYPE_CHECKING:
    import zarr

#: Version of the layout and attributes written by this module.
SCHEMA_VERSION = 1
#: Name of the root attribute holding everything stainbench writes.
ATTR = "stainbench"
KINDS = ("paired", "unpaired", "volume")
#: Root attribute key: ``{array key: count}`` of all-zero chunks (shards) that zarr wrote no
#: file for, recorded by ``data ingest`` for volume arrays, so ``data info`` can tell a
#: deleted chunk file from an empty one.
EMPTY_CHUNKS_KEY = "empty_chunks"
#: Names that are groups of the store but not splits.
_RESERVED = ("stats", "volumes")


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``manifest`` (sorted keys, no spaces)."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class VolumeRef:
    """One volume (or one z range of it) in a split.

    ``z`` is the half-open slice range ``[z0, z1)`` of the volume that belongs to the split.
    """

    name: str
    z: tuple[int, int]


class TileStore:
    """Read access to a complete store. Create it with :func:`open_store`.

    Arrays are zarr arrays (lazy; indexing reads only the chunks touched), dtype uint8 or
    uint16, shape ``(N, H, W, C)`` for tiles and ``(Z, Y, X, C)`` for volumes.
    """

    def __init__(self, path: Path, group: zarr.Group, attrs: Mapping[str, Any]) -> None:
        self.path = path
        self.group = group
        self._attrs = dict(attrs)

    @property
    def kind(self) -> str:
        """``"paired"``, ``"unpaired"`` or ``"volume"``."""
        return str(self._attrs["kind"])

    @property
    def schema_version(self) -> int:
        return int(self._attrs["schema_version"])

    @property
    def manifest(self) -> dict[str, Any]:
        """Sources, split, formats, conversions and failures (see docs/DATA.md)."""
        return dict(self._attrs.get("manifest", {}))

    @property
    def manifest_hash(self) -> str:
        """sha256 of the manifest's canonical JSON: the identity of this data set."""
        return str(self._attrs["manifest_hash"])

    @property
    def stats(self) -> dict[str, Any]:
        """Normalization statistics (``stainbench.data.stats`` layout); empty if not computed."""
        return dict(self._attrs.get("stats") or {})

    @property
    def splits(self) -> list[str]:
        """Split names, ``train`` first, then ``val``, then any others sorted."""
        if self.kind == "volume":
            names = list(self.manifest.get("split", {}).get("volumes", {}))
        else:
            names = [name for name, _ in self.group.groups() if name not in _RESERVED]
        order = {"train": 0, "val": 1}
        return sorted(names, key=lambda n: (order.get(n, 2), n))

    def domains(self, split: str) -> list[str]:
        """Domain names (``["A", "B"]``) present in ``split``."""
        self._check_split(split)
        if self.kind == "volume":
            refs = self.volumes(split)
            if not refs:
                return []
            return sorted(name for name, _ in self.group[f"volumes/{refs[0].name}"].arrays())
        return sorted(name for name, _ in self.group[split].arrays())

    def array(self, split: str, domain: str) -> zarr.Array:
        """The tiles of one domain in one split: zarr array ``(N, H, W, C)``."""
        self._check_split(split)
        if self.kind == "volume":
            raise DataError(
                f"{self.path}: a volume store has no tile arrays; use volumes(split) and "
                "volume_array(name, domain)"
            )
        if domain not in self.domains(split):
            raise DataError(
                f"{self.path}: no domain {domain!r} in split {split!r} "
                f"(has {', '.join(self.domains(split))})"
            )
        return self.group[f"{split}/{domain}"]  # type: ignore[return-value]

    def per_image_stats(self, split: str, domain: str) -> np.ndarray | None:
        """Per-tile statistics ``(N, C, len(FIELDS))`` float64, or None if not computed."""
        key = f"stats/{split}/{domain}"
        try:
            arr = self.group[key]
        except KeyError:
            return None
        return np.asarray(arr[...])

    def volumes(self, split: str) -> list[VolumeRef]:
        """The volumes (with their z range) of ``split`` in a volume store."""
        if self.kind != "volume":
            raise DataError(f"{self.path}: a {self.kind} store has no volumes")
        spec = self.manifest.get("split", {}).get("volumes", {}).get(split)
        if spec is None:
            raise DataError(f"{self.path}: no split {split!r} (has {', '.join(self.splits)})")
        return [VolumeRef(str(v["name"]), (int(v["z"][0]), int(v["z"][1]))) for v in spec]

    def volume_array(self, name: str, domain: str) -> zarr.Array:
        """Volume ``name`` of ``domain``: zarr array ``(Z, Y, X, C)``."""
        try:
            return self.group[f"volumes/{name}/{domain}"]  # type: ignore[return-value]
        except KeyError:
            raise DataError(f"{self.path}: no volume {name!r} in domain {domain!r}") from None

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DataError(f"{self.path}: no split {split!r} (has {', '.join(self.splits)})")


def read_attrs(path: str | Path) -> dict[str, Any] | None:
    """The ``stainbench`` attribute of the zarr group at ``path``; None if it has none.

    Reads ``zarr.json`` directly (no zarr import), so it is cheap and works on broken stores.
    """
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return None
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    attrs = doc.get("attributes", {}) if isinstance(doc, dict) else {}
    value = attrs.get(ATTR) if isinstance(attrs, dict) else None
    return value if isinstance(value, dict) else None


def open_store(path: str | Path) -> TileStore:
    """Open a complete store for reading.

    Raises :class:`DataError` (one line naming the path) when the path is not a stainbench
    store, has another schema version, or is incomplete (an ingestion that did not finish).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such store (create one with 'stainbench data ingest' or 'demo')")
    if not (p / "zarr.json").is_file():
        raise DataError(f"{p}: not a zarr v3 store (no zarr.json)")
    attrs = read_attrs(p)
    if attrs is None:
        raise DataError(f"{p}: not a stainbench store (no '{ATTR}' attribute)")
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(
            f"{p}: store schema version {version!r}, this stainbench reads {SCHEMA_VERSION}; "
            "re-ingest the data"
        )
    if attrs.get("complete") is not True:
        raise DataError(
            f"{p}: incomplete store (its ingestion did not finish); run the ingestion again "
            "with --force"
        )
    if attrs.get("kind") not in KINDS:
        raise DataError(f"{p}: unknown store kind {attrs.get('kind')!r}")
    missing = [key for key in expected_arrays(attrs) if not (p / key / "zarr.json").is_file()]
    if missing:
        raise DataError(
            f"{p}: damaged store: array {missing[0]} listed in its manifest is missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; re-ingest the data with --force"
        )
    import zarr

    group = zarr.open_group(str(p), mode="r")
    return TileStore(p, group, attrs)


def expected_arrays(attrs: Mapping[str, Any]) -> dict[str, int | None]:
    """Arrays a complete store must hold according to its attributes: ``{key: first dim}``.

    Tile stores: ``<split>/<domain>`` from ``manifest.split.counts`` (first dim = tile count)
    and the per-tile statistics arrays listed in ``stats.per_image`` (first dim = same
    count); volume stores: ``volumes/<name>/<domain>`` from ``manifest.sources`` (first dim
    = Z). Stores whose manifest lists nothing (hand-written test stores) expect nothing.
    """
    manifest = attrs.get("manifest") or {}
    out: dict[str, int | None] = {}
    if not isinstance(manifest, Mapping):
        return out
    split = manifest.get("split") or {}
    counts = split.get("counts") if isinstance(split, Mapping) else None
    if attrs.get("kind") != "volume" and isinstance(counts, Mapping):
        for name, domains in counts.items():
            if isinstance(domains, Mapping):
                for domain, n in domains.items():
                    out[f"{name}/{domain}"] = int(n) if isinstance(n, int) else None
    if attrs.get("kind") == "volume":
        for src in manifest.get("sources") or []:
            if isinstance(src, Mapping) and "volume" in src and "domain" in src:
                shape = src.get("shape")
                first = int(shape[0]) if isinstance(shape, list) and shape else None
                out[f"volumes/{src['volume']}/{src['domain']}"] = first
    stats = attrs.get("stats") or {}
    per_image = stats.get("per_image") if isinstance(stats, Mapping) else None
    if isinstance(per_image, Mapping):
        for key, where in per_image.items():
            out[str(where)] = out.get(str(key))
    return out


def _is_zarr_leftover(p: Path) -> bool:
    """True when every file under ``p`` is zarr metadata (``zarr.json``) or a chunk file
    (below a ``c`` folder) and there is at least one: what an interrupted delete or write
    of a store leaves behind."""
    seen = False
    for root, _dirs, files in os.walk(p):
        rel = Path(root).relative_to(p).parts
        for name in files:
            if name != "zarr.json" and "c" not in rel:
                return False
            seen = True
    return seen


def check_target(path: str | Path, force: bool) -> None:
    """Raise :class:`DataError` unless a new store may be written at ``path``.

    Allowed: nothing there, an empty folder, or (with ``force``) a zarr store or the zarr
    remains of an interrupted run. Anything else is never touched.
    """
    p = Path(path)
    if not p.exists():
        return
    if not p.is_dir():
        raise DataError(f"{p}: exists and is not a directory; choose another --out")
    if not any(p.iterdir()):
        return
    if (p / "zarr.json").is_file():
        if not force:
            what = "a stainbench store" if read_attrs(p) is not None else "a zarr store"
            raise DataError(f"{p}: already holds {what}; pass --force to replace it")
        return
    if _is_zarr_leftover(p):
        if not force:
            raise DataError(
                f"{p}: holds the remains of a store (zarr arrays, no root zarr.json); "
                "pass --force to replace it"
            )
        return
    raise DataError(
        f"{p}: directory is not empty and not a zarr store; refusing to overwrite it "
        f"(delete it yourself with 'rm -r {shlex.quote(str(p))}' or choose another --out)"
    )


def _init_group(p: Path, kind: str) -> zarr.Group:
    import zarr

    group = zarr.open_group(str(p), mode="w")
    group.attrs[ATTR] = {"schema_version": SCHEMA_VERSION, "kind": kind, "complete": False}
    return group


def create_store(path: str | Path, kind: str, force: bool = False) -> zarr.Group:
    """Create an empty store at ``path`` marked incomplete; returns the zarr group.

    An existing stainbench (or other zarr) store at ``path``, or the zarr remains of an
    interrupted run, is refused unless ``force`` (then deleted first: prefer
    :func:`staged_store`, which keeps the old store until the new one is written); a
    non-empty directory that is not a zarr store is always refused (never deleted).
    """
    if kind not in KINDS:
        raise DataError(f"unknown store kind {kind!r} (expected one of {', '.join(KINDS)})")
    p = Path(path)
    check_target(p, force)
    if p.exists():
        shutil.rmtree(p)
    return _init_group(p, kind)


@contextmanager
def staged_store(
    path: str | Path, kind: str, force: bool = False
) -> Iterator[tuple[zarr.Group, Path]]:
    """Write a new store without risking the one at ``path``; yields ``(group, staging)``.

    The store is created (marked incomplete) in a hidden sibling ``.NAME.tmp-XXXX``; write
    it and finalize it inside the ``with`` block, passing ``staging`` wherever a path is
    needed. When the block ends normally the staging folder replaces ``path`` (old store
    renamed to ``.NAME.old-XXXX``, new one renamed in, old one deleted): a reader sees the
    old store, briefly nothing, then the new one, never a mix. On any exception,
    KeyboardInterrupt included, the staging folder is deleted and ``path`` is left exactly as
    it was. The target is checked first as in :func:`create_store` (``force`` to replace a
    store). A symbolic link at ``path`` is followed (the store it points to is replaced). An
    empty folder at ``path`` (a mount point, the current directory) holds nothing to lose:
    the store is written into it directly, and emptied again on an exception.
    """
    if kind not in KINDS:
        raise DataError(f"unknown store kind {kind!r} (expected one of {', '.join(KINDS)})")
    p = Path(os.path.realpath(path))  # '.', '..' and symbolic links resolved
    check_target(p, force)
    if p.is_dir() and not any(p.iterdir()):
        group = _init_group(p, kind)
        try:
            yield group, p
        except BaseException:
            _empty_folder(p)
            raise
        return
    parent = p.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{p.name}.tmp-", dir=parent))
    try:
        group = _init_group(staging, kind)
        yield group, staging
        check_target(p, force)  # something may have appeared at ``path`` meanwhile
        _swap_into_place(staging, p)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _empty_folder(p: Path) -> None:
    for child in p.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _swap_into_place(staging: Path, p: Path) -> None:
    """Rename ``staging`` to ``p``; an existing ``p`` is moved aside first, then deleted.

    A failed rename (``p`` a mount point, a busy folder) is a one-line :class:`DataError`
    with ``p`` as it was.
    """
    old: Path | None = None
    if p.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{p.name}.old-", dir=p.parent))
        try:
            os.rename(p, old / "store")
        except OSError as exc:
            shutil.rmtree(old, ignore_errors=True)
            raise DataError(
                f"{p}: cannot move the old store aside to replace it ({exc.strerror}; a mount "
                "point?): empty it yourself, or choose another --out"
            ) from exc
    try:
        os.rename(staging, p)
    except BaseException as exc:
        if old is not None:
            os.rename(old / "store", p)
            shutil.rmtree(old, ignore_errors=True)
        if isinstance(exc, OSError):
            raise DataError(f"{p}: cannot put the new store in place ({exc.strerror})") from exc
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def finalize_store(
    group: zarr.Group,
    manifest: Mapping[str, Any],
    stats: Mapping[str, Any] | None,
) -> str:
    """Write manifest, its hash and stats, then mark the store complete. Returns the hash."""
    attrs = dict(group.attrs[ATTR])  # type: ignore[arg-type]
    digest = manifest_hash(manifest)
    attrs.update(
        manifest=dict(manifest), manifest_hash=digest, stats=dict(stats or {}), complete=False
    )
    group.attrs[ATTR] = jsonable(attrs)
    attrs["complete"] = True
    group.attrs[ATTR] = jsonable(attrs)
    return digest


def update_stats(path: str | Path, stats: Mapping[str, Any]) -> None:
    """Replace the stored statistics of a complete store (``stainbench data stats``)."""
    store = open_store(path)
    import zarr

    group = zarr.open_group(str(store.path), mode="r+")
    attrs = dict(group.attrs[ATTR])  # type: ignore[arg-type]
    attrs["stats"] = dict(stats)
    group.attrs[ATTR] = jsonable(attrs)
