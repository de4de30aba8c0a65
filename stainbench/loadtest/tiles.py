"""The tile set of a load test: read in the CLI process, handed to Locust as a ``.npy`` file.

Locust (gevent) and zarr (asyncio) cannot share a process, so tiles are read from a zarr
store here and written as a plain uint8 ``(N, H, W, 3)`` array that Locust's processes load
with numpy. No Locust import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stainbench.errors import DataError
from stainbench.loadtest.payload import check_tiles, load_tiles

#: Where ``make demo`` leaves its paired store, in the order they are tried without --tiles.
DEMO_STORES = (Path("demo_out/data/paired.zarr"), Path("demo_out/paired.zarr"))


def default_tile_source() -> Path:
    """The demo set's paired store; :class:`DataError` when ``make demo`` has not run."""
    for candidate in DEMO_STORES:
        if candidate.exists():
            return candidate
    raise DataError(
        "no tiles given and no demo store found (demo_out/data/paired.zarr): run 'make demo' or "
        "give --tiles STORE.zarr|TILES.npy"
    )


@dataclass(frozen=True)
class TileSet:
    """The tiles sent: ``path`` of the ``.npy`` file, uint8 ``(count, height, width, 3)``."""

    path: Path
    source: str
    count: int
    height: int
    width: int


def _from_store(source: Path, split: str, domain: str, max_tiles: int) -> np.ndarray:
    from stainbench.data.store import open_store

    store = open_store(source)
    array = store.array(split, domain)
    if array.dtype != np.uint8:
        raise DataError(
            f"{source}: split {split!r} domain {domain!r} holds {array.dtype} tiles; "
            "served models take uint8: give a uint8 store or a .npy file"
        )
    n = min(int(array.shape[0]), max_tiles)
    return np.asarray(array[:n])


def prepare_tiles(
    source: str | Path | None,
    out_dir: str | Path,
    *,
    split: str = "val",
    domain: str = "A",
    max_tiles: int = 64,
) -> TileSet:
    """Resolve the tiles to send into a ``.npy`` file Locust can load.

    ``source``: a ``.npy`` file (uint8 ``(N, H, W, 3)``, used in place), a stainbench zarr
    store (its ``split``/``domain`` tiles, at most ``max_tiles``, written to
    ``out_dir/tiles.npy``), a folder holding ``paired.zarr`` (``stainbench data demo``'s
    output), or ``None`` for the demo store (:func:`default_tile_source`). Raises
    :class:`DataError` (one line) for a missing source, another dtype or shape, or an empty
    set.
    """
    if max_tiles < 1:
        raise DataError(f"--max-tiles must be >= 1, got {max_tiles}")
    src = default_tile_source() if source is None else Path(source)
    if src.is_dir() and not (src / "zarr.json").exists() and (src / "paired.zarr").is_dir():
        src = src / "paired.zarr"
    if not src.exists():
        raise DataError(
            f"tile source {src} does not exist: give a zarr store (e.g. demo_out/data/paired.zarr "
            "from 'make demo') or a .npy file with --tiles"
        )
    if src.is_file():
        if src.suffix != ".npy":
            raise DataError(f"tile source {src} is neither a zarr store nor a .npy file")
        tiles = load_tiles(src)
        path = src.resolve()
    else:
        tiles = _from_store(src, split, domain, max_tiles)
        check_tiles(tiles, f"{src} ({split}/{domain})")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = (out / "tiles.npy").resolve()
        np.save(path, np.ascontiguousarray(tiles))
    n, h, w, _ = tiles.shape
    return TileSet(path=path, source=str(src), count=int(n), height=int(h), width=int(w))
