"""The built-in demo data set, made from scikit-image's immunohistochemistry image.

``skimage.data.immunohistochemistry()`` is a real 512x512 RGB field stained with hematoxylin
(nuclei, blue) and DAB (the brown marker). Colour deconvolution (``skimage.color.rgb2hed``)
separates the two stains; re-rendering only the hematoxylin channel (``hed2rgb`` with DAB and
eosin set to zero) gives what the same field would look like without the marker. The paired
task is therefore real virtual staining: from the hematoxylin-only image (domain A) predict
the IHC image (domain B), i.e. predict where the DAB is.

Regions (no leakage, same tissue mix): the field is cut into full-height vertical stripes
(``stripe_count(tile)``, 3 for 128-pixel tiles) that alternate train, val, train, ... from the
left, with an 8-pixel guard between neighbours (``regions``); every tile lies entirely inside
one stripe of its split. Stripes rather than a top/bottom band split because the field has
glands at the top and stroma at the bottom: both splits then hold both (docs/DATA.md). Tiles
are random positions inside the split's stripes (seeded), so training tiles overlap each other
(random crops of one field), but never a validation pixel.

Three stores are written into ``out``:

- ``paired.zarr``: ``train/A``, ``train/B``, ``val/A``, ``val/B`` uint8 ``(N, tile, tile, 3)``;
- ``unpaired.zarr``: the same regions, but A and B tiles at independent positions and in unequal
  numbers (``N_B = ceil(0.8 N_A)``): no A tile has its B partner;
- ``volume.zarr``: one paired volume ``volumes/ihc_stack/{A,B}`` uint8 ``(Z, 256, 256, 3)``:
  slice ``z`` is the 256x256 window at offset ``(8z, 8z)`` (a diagonal drift through the
  field, like serial sections) with its stain optical densities scaled by the smooth factor
  ``0.75 + 0.5 z / (Z - 1)`` (stain uptake growing with depth) before re-rendering. Split by
  z range: the last quarter of the slices is validation.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stainbench import __version__
from stainbench.data.stats import StatsAccumulator
from stainbench.data.store import ATTR, EMPTY_CHUNKS_KEY, read_attrs, staged_store
from stainbench.data.writer import (
    TILES_PER_SHARD,
    create_tile_array,
    create_volume_array,
    finalize_with_stats,
)
from stainbench.errors import DataError

#: Default sizes (the seed's 7,500 / 750 tiles).
DEFAULT_TILE = 128
DEFAULT_TRAIN = 7500
DEFAULT_VAL = 750
#: Gap in pixels between a training and a validation cell of the checkerboard split.
GUARD = 8
#: Demo volume: slices, slice side, drift per slice in pixels.
VOLUME_Z = 32
VOLUME_SIDE = 256
VOLUME_DRIFT = 8
SOURCE_NAME = "skimage.data.immunohistochemistry"

Progress = Callable[[str, int, int], None]


@dataclass
class DemoResult:
    """Paths of the three stores written, and what went into them."""

    out: Path
    paired: Path
    unpaired: Path
    volume: Path
    tile: int
    n_train: int
    n_val: int
    seed: int
    regions: dict[str, list[list[int]]] = field(default_factory=dict)

    @property
    def paths(self) -> dict[str, Path]:
        return {"paired": self.paired, "unpaired": self.unpaired, "volume": self.volume}


def load_source() -> np.ndarray:
    """The IHC image: uint8 ``(512, 512, 3)`` RGB (ships with scikit-image, no download)."""
    from skimage import data

    return np.ascontiguousarray(data.immunohistochemistry())


def render_stains(rgb: np.ndarray, h_only: bool, factor: float = 1.0) -> np.ndarray:
    """Colour-deconvolve ``rgb`` (uint8 ``(H, W, 3)``) and re-render it as uint8 RGB.

    ``h_only``: keep only the hematoxylin channel (DAB and eosin set to 0); ``factor``
    multiplies the stain optical densities (1.0 with ``h_only=False`` reproduces the image up
    to rounding).
    """
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(rgb) * factor
    if h_only:
        hed[..., 1:] = 0.0
    out = hed2rgb(hed)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def stripe_count(tile: int, width: int = 512) -> int:
    """Vertical stripes of the split: ``max(2, width // (tile + tile // 4 + GUARD))``.

    Each stripe must hold a tile plus the guard with room to spare (a quarter tile), so that
    its tiles come from many positions: 3 stripes for the default 128-pixel tiles, 10 for 32.
    """
    return max(2, width // (tile + tile // 4 + GUARD))


def guard_width(tile: int, width: int = 512) -> int:
    """Guard gap in pixels between neighbouring stripes: ``GUARD``, or 0 when a stripe is too
    narrow to hold a tile with the guard (tiles above 248 pixels)."""
    narrowest = width // stripe_count(tile, width)
    return GUARD if narrowest - GUARD >= tile else 0


def max_tile(image_height: int = 512) -> int:
    """Largest tile side for which every region holds a tile (256 for 512 pixels)."""
    return image_height // 2


def regions(tile: int, shape: tuple[int, int] = (512, 512)) -> dict[str, list[list[int]]]:
    """Train / val regions: lists of ``[y0, y1, x0, x1]`` (half-open), pairwise disjoint.

    The field is cut into ``stripe_count(tile)`` vertical stripes of (nearly) equal width,
    each the full height; stripe ``k`` (from the left) is training when ``k`` is even and
    validation when it is odd, so both splits run through the glands at the top and the
    stroma at the bottom of the field (the same tissue mix). Each stripe is narrowed by half
    the guard (``guard_width(tile)``) on every side it shares with another stripe, so every
    training pixel is at least the guard away from every validation pixel. A tile always lies
    inside one region, hence no training tile contains a validation pixel.
    """
    h, w = shape
    n = stripe_count(tile, w)
    g = guard_width(tile, w)
    edges = [round(k * w / n) for k in range(n + 1)]
    out: dict[str, list[list[int]]] = {"train": [], "val": []}
    for k in range(n):
        x0 = edges[k] + (g // 2 if k > 0 else 0)
        x1 = edges[k + 1] - (g - g // 2 if k < n - 1 else 0)
        out["train" if k % 2 == 0 else "val"].append([0, h, x0, x1])
    return out


def split_layout(tile: int, reg: dict[str, list[list[int]]]) -> dict[str, Any]:
    """The manifest's description of the split (method, layout, guard, regions, rule)."""
    n = stripe_count(tile)
    return {
        "method": "region",
        "layout": "vertical_stripes",
        "stripes": n,
        "guard_px": guard_width(tile),
        "regions": reg,
        "rule": (
            f"the field is cut into {n} full-height vertical stripes; stripe k (from the left, "
            "from 0) is train when k is even, val when k is odd; each stripe is narrowed by "
            "half the guard on every side it shares with another stripe; every tile lies "
            "entirely inside one region ([y0, y1, x0, x1], half-open)"
        ),
    }


def sample_positions(
    rng: np.random.Generator, region_list: list[list[int]], tile: int, n: int
) -> np.ndarray:
    """``n`` top-left corners ``(y, x)`` (int64 ``(n, 2)``) of tiles, each entirely inside one
    of the regions: uniform over all such positions (a region is drawn with probability
    proportional to its number of tile positions, then a position inside it)."""
    sizes = np.array(
        [(y1 - y0 - tile + 1) * (x1 - x0 - tile + 1) for y0, y1, x0, x1 in region_list],
        dtype=np.float64,
    )
    if (sizes <= 0).any():
        raise DataError(f"a demo region is smaller than the {tile}-pixel tile")
    which = rng.choice(len(region_list), size=n, p=sizes / sizes.sum())
    r = np.asarray(region_list, dtype=np.int64)[which]
    ys = r[:, 0] + (rng.random(n) * (r[:, 1] - r[:, 0] - tile + 1)).astype(np.int64)
    xs = r[:, 2] + (rng.random(n) * (r[:, 3] - r[:, 2] - tile + 1)).astype(np.int64)
    return np.stack([ys, xs], axis=1).astype(np.int64)


def make_demo_store(
    out: str | Path,
    tile: int = DEFAULT_TILE,
    n_train: int = DEFAULT_TRAIN,
    n_val: int = DEFAULT_VAL,
    seed: int = 0,
    force: bool = False,
    progress: Progress | None = None,
) -> DemoResult:
    """Write ``out/paired.zarr``, ``out/unpaired.zarr`` and ``out/volume.zarr``.

    ``tile``: tile side in pixels (16..256); ``n_train``/``n_val``: tiles per split (>= 1);
    ``seed``: tile positions; ``force``: replace existing stores in ``out``.
    ``progress(task, done, total)`` is called while writing. Takes ~35 s at the defaults
    on 2 cores; tests use e.g. ``tile=32, n_train=8, n_val=4``.
    """
    if not 16 <= tile <= max_tile():
        raise DataError(f"--tile {tile}: must be between 16 and {max_tile()} pixels")
    if n_train < 1 or n_val < 1:
        raise DataError(f"--train {n_train} / --val {n_val}: need at least one tile each")
    out_dir = Path(out)
    if (out_dir / "zarr.json").exists() or read_attrs(out_dir) is not None:
        raise DataError(f"{out_dir}: is a zarr store; give a directory for the demo stores")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory")
    paths = {k: out_dir / f"{k}.zarr" for k in ("paired", "unpaired", "volume")}
    if not force:
        for p in paths.values():
            if p.exists():
                raise DataError(f"{p}: already exists; pass --force to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)

    source = load_source()
    source_sha = hashlib.sha256(source.tobytes()).hexdigest()
    h_only = render_stains(source, h_only=True)
    reg = regions(tile, source.shape[:2])
    rng = np.random.default_rng(seed)
    pos = {
        "train": sample_positions(rng, reg["train"], tile, n_train),
        "val": sample_positions(rng, reg["val"], tile, n_val),
    }
    base = {
        "created_by": "stainbench data demo",
        "stainbench_version": __version__,
        "sources": [
            {
                "path": SOURCE_NAME,
                "sha256": source_sha,
                "shape": list(source.shape),
                "dtype": "uint8",
                "note": "sha256 of the decoded RGB pixels",
            }
        ],
        "formats": {"A": "uint8 RGB", "B": "uint8 RGB"},
        "conversions": [
            "A: hematoxylin-only rendering (skimage.color.rgb2hed, DAB and eosin set to 0, "
            "hed2rgb), rounded to uint8",
            "B: the original IHC image (hematoxylin + DAB)",
        ],
        "failures": [],
        "params": {"tile": tile, "n_train": n_train, "n_val": n_val, "seed": seed},
    }

    # paired ------------------------------------------------------------------------------
    with staged_store(paths["paired"], "paired", force) as (group, staging):
        counter = _Counter(progress, "paired tiles", 2 * (n_train + n_val))
        acc = StatsAccumulator()
        for split in ("train", "val"):
            for domain, image in (("A", h_only), ("B", source)):
                arr = create_tile_array(
                    group, f"{split}/{domain}", len(pos[split]), tile, tile, 3, "u1"
                )
                _write_tiles(arr, image, pos[split], tile, acc, counter)
        manifest = {
            **base,
            "kind": "paired",
            "split": {
                **split_layout(tile, reg),
                "seed": seed,
                "positions": {s: pos[s].tolist() for s in pos},
                "counts": {s: {"A": len(pos[s]), "B": len(pos[s])} for s in pos},
            },
        }
        finalize_with_stats(group, staging, "paired", manifest, accumulated=acc)

    # unpaired ----------------------------------------------------------------------------
    urng = np.random.default_rng([seed, 1])
    counts = {
        s: {"A": n, "B": max(1, math.ceil(0.8 * n))}
        for s, n in (("train", n_train), ("val", n_val))
    }
    upos: dict[str, dict[str, list[list[int]]]] = {}
    with staged_store(paths["unpaired"], "unpaired", force) as (group, staging):
        acc = StatsAccumulator()
        for split in ("train", "val"):
            upos[split] = {}
            for domain, image in (("A", h_only), ("B", source)):
                p = sample_positions(urng, reg[split], tile, counts[split][domain])
                arr = create_tile_array(group, f"{split}/{domain}", len(p), tile, tile, 3, "u1")
                _write_tiles(arr, image, p, tile, acc)
                upos[split][domain] = p.tolist()
                _tick(progress, "unpaired tiles", 1, 1)
        manifest = {
            **base,
            "kind": "unpaired",
            "split": {
                **split_layout(tile, reg),
                "seed": seed,
                "positions": upos,
                "counts": counts,
                "note": "A and B tiles at independent random positions, unequal counts",
            },
        }
        finalize_with_stats(group, staging, "unpaired", manifest, accumulated=acc)

    # volume ------------------------------------------------------------------------------
    write_demo_volume(paths["volume"], source, base, force=force)
    _tick(progress, "volume", 1, 1)
    return DemoResult(
        out_dir,
        paths["paired"],
        paths["unpaired"],
        paths["volume"],
        tile,
        n_train,
        n_val,
        seed,
        reg,
    )


def write_demo_volume(
    path: Path, source: np.ndarray, base: dict[str, Any], force: bool = False
) -> None:
    """The demo volume (see the module docstring): paired A/B, split by z range."""
    z = VOLUME_Z
    with staged_store(path, "volume", force) as (group, staging):
        arrays = {
            d: create_volume_array(
                group,
                f"volumes/ihc_stack/{d}",
                (z, VOLUME_SIDE, VOLUME_SIDE, 3),
                "u1",
                chunks=(8, 128, 128, 3),
            )
            for d in ("A", "B")
        }
        for k in range(z):
            o = VOLUME_DRIFT * k
            window = source[o : o + VOLUME_SIDE, o : o + VOLUME_SIDE]
            factor = 0.75 + 0.5 * k / (z - 1)
            arrays["A"][k] = render_stains(window, h_only=True, factor=factor)
            arrays["B"][k] = render_stains(window, h_only=False, factor=factor)
        z_val = z - z // 4
        manifest = {
            **base,
            "kind": "volume",
            "params": {"slices": z, "side": VOLUME_SIDE, "drift_px": VOLUME_DRIFT},
            "conversions": [
                *base["conversions"],
                f"slice z = window at offset (8z, 8z) of the source, stain optical densities x "
                f"(0.75 + 0.5 z / {z - 1}), re-rendered with hed2rgb",
            ],
            "split": {
                "method": "region",
                "axis": "z",
                "volumes": {
                    "train": [{"name": "ihc_stack", "z": [0, z_val]}],
                    "val": [{"name": "ihc_stack", "z": [z_val, z]}],
                },
            },
        }
        from stainbench.data.info import absent_chunks

        keys = {d: f"volumes/ihc_stack/{d}" for d in arrays}
        empty = {keys[d]: absent_chunks(staging, keys[d], a) for d, a in arrays.items()}
        group.attrs[ATTR] = {**dict(group.attrs[ATTR]), EMPTY_CHUNKS_KEY: empty}  # type: ignore[arg-type]
        finalize_with_stats(group, staging, "volume", manifest, None)


class _Counter:
    def __init__(self, progress: Progress | None, task: str, total: int) -> None:
        self.progress, self.task, self.total, self.done = progress, task, total, 0

    def __call__(self, n: int) -> None:
        self.done += n
        _tick(self.progress, self.task, self.done, self.total)


def _write_tiles(
    arr: Any,
    image: np.ndarray,
    positions: np.ndarray,
    tile: int,
    acc: StatsAccumulator,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Write the tiles at ``positions`` of ``image`` into ``arr`` one shard at a time, adding
    them to the statistics on the way."""
    split, domain = str(arr.path).split("/")[-2:]
    for start in range(0, len(positions), TILES_PER_SHARD):
        block = positions[start : start + TILES_PER_SHARD]
        tiles = np.stack([image[y : y + tile, x : x + tile] for y, x in block])
        arr[start : start + len(block)] = tiles
        acc.add_tiles(split, domain, start, tiles)
        if on_batch is not None:
            on_batch(len(block))


def _tick(progress: Progress | None, task: str, done: int, total: int) -> None:
    if progress is not None:
        progress(task, done, total)
