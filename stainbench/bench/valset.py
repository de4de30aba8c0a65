"""The validation set of a comparison: paired input (A) and target (B) uint8 RGB tiles.

Two sources are accepted by :func:`open_val_set`:

- a **store** written by ``stainbench data`` (a zarr v3 group, ``kind`` ``"paired"``): its
  ``val`` split, arrays ``val/A`` and ``val/B`` of shape ``(N, H, W, 3)``, read lazily;
- a **folder of paired tiles**: ``VAL/A/`` and ``VAL/B/`` holding image files (PNG, JPEG,
  TIFF) matched by file name without extension (``A/t01.png`` pairs with ``B/t01.png`` or
  ``B/t01.tif``). RGBA images lose their alpha channel; grey or 16-bit images are refused.

Anything else (an empty set, unpaired tiles, A/B shapes that differ, non-RGB or non-uint8
tiles, tiles that violate a model's ``size_multiple``) raises a one-line
:class:`~stainbench.errors.BenchmarkError` naming the path and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stainbench.errors import BenchmarkError, DataError

#: File extensions read from a folder val set.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class ValSet:
    """Paired validation tiles.

    ``names[i]`` identifies tile ``i`` (file stem, or ``val[i]`` for a store); ``shapes[i]``
    its ``(H, W)``. :meth:`get` returns ``(inputs, targets)`` as uint8 ``(n, H, W, 3)`` for
    indices of tiles that share one shape (see :meth:`batches`).
    """

    source: str
    kind: str  # "store" or "folder"
    names: list[str]
    shapes: list[tuple[int, int]]
    manifest_hash: str | None = None
    _a: Any = field(default=None, repr=False)  # zarr array or list of ndarrays
    _b: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    def get(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets of ``indices``: two uint8 arrays ``(n, H, W, 3)``."""
        idx = [int(i) for i in indices]
        shapes = {self.shapes[i] for i in idx}
        if len(shapes) > 1:
            raise BenchmarkError(f"{self.source}: tiles {idx} differ in size {sorted(shapes)}")
        if self.kind == "store":
            order = np.argsort(idx)
            sorted_idx = [idx[i] for i in order]
            a = np.asarray(self._a.get_orthogonal_selection((sorted_idx,)))
            b = np.asarray(self._b.get_orthogonal_selection((sorted_idx,)))
            inverse = np.argsort(order)
            return a[inverse], b[inverse]
        return np.stack([self._a[i] for i in idx]), np.stack([self._b[i] for i in idx])

    def batches(self, batch_size: int, indices: Sequence[int] | None = None) -> list[list[int]]:
        """Split ``indices`` (default all) into batches of at most ``batch_size`` same-size tiles.

        Order is kept within each tile size; sizes come in order of first appearance.
        """
        if batch_size < 1:
            raise BenchmarkError(f"batch size must be at least 1, got {batch_size}")
        groups: dict[tuple[int, int], list[int]] = {}
        for i in range(len(self)) if indices is None else indices:
            groups.setdefault(self.shapes[i], []).append(int(i))
        return [
            g[k : k + batch_size] for g in groups.values() for k in range(0, len(g), batch_size)
        ]

    def subset(self, max_tiles: int | None) -> ValSet:
        """The first ``max_tiles`` tiles (all when ``None``)."""
        if max_tiles is None or max_tiles >= len(self):
            return self
        if max_tiles < 1:
            raise BenchmarkError(f"--max-tiles must be at least 1, got {max_tiles}")
        n = max_tiles
        if self.kind == "store":
            return ValSet(
                self.source,
                self.kind,
                self.names[:n],
                self.shapes[:n],
                self.manifest_hash,
                self._a,
                self._b,
            )
        return ValSet(
            self.source,
            self.kind,
            self.names[:n],
            self.shapes[:n],
            self.manifest_hash,
            self._a[:n],
            self._b[:n],
        )

    def check_size_multiple(self, model: str, multiple: int) -> None:
        """Refuse tiles whose height or width is not a multiple of ``multiple``."""
        if multiple <= 1:
            return
        bad = [
            (n, s)
            for n, s in zip(self.names, self.shapes, strict=True)
            if s[0] % multiple or s[1] % multiple
        ]
        if bad:
            name, (h, w) = bad[0]
            raise BenchmarkError(
                f"{self.source}: tile {name!r} is {h}x{w} but model {model!r} needs height and "
                f"width multiples of {multiple} ({len(bad)} of {len(self)} tiles affected); "
                "crop the tiles or use --models to leave the model out"
            )

    def describe(self) -> dict[str, Any]:
        """What went into the comparison (for results.json)."""
        sizes = sorted({f"{h}x{w}" for h, w in self.shapes})
        return {
            "source": self.source,
            "kind": self.kind,
            "n_tiles": len(self),
            "tile_sizes": sizes,
            "manifest_hash": self.manifest_hash,
        }


def open_val_set(path: str | Path, *, split: str = "val") -> ValSet:
    """Open a store (its ``split``) or a folder of paired tiles as a :class:`ValSet`."""
    p = Path(path)
    if not p.exists():
        raise BenchmarkError(
            f"{p}: validation set not found (a store from 'stainbench data' "
            "or a folder with A/ and B/ subfolders)"
        )
    if (p / "zarr.json").is_file():
        return _open_store(p, split)
    if p.is_dir():
        return _open_folder(p)
    raise BenchmarkError(f"{p}: not a store or a folder of paired tiles (A/ and B/)")


def _open_store(p: Path, split: str) -> ValSet:
    from stainbench.data.store import open_store

    try:
        store = open_store(p)
    except DataError as exc:
        raise BenchmarkError(str(exc)) from None
    if store.kind == "volume":
        raise BenchmarkError(
            f"{p}: volume stores are not supported as --val-set (served models take 2D RGB "
            "tiles); give a paired tile store or a folder with A/ and B/ tiles matched by name"
        )
    if store.kind != "paired":
        raise BenchmarkError(
            f"{p}: a {store.kind} store has no paired targets; quality metrics need a paired "
            "store (or a folder with A/ and B/ tiles matched by name)"
        )
    if split not in store.splits:
        raise BenchmarkError(f"{p}: no split {split!r} (has {', '.join(store.splits) or 'none'})")
    domains = store.domains(split)
    if not {"A", "B"} <= set(domains):
        raise BenchmarkError(f"{p}: split {split!r} needs arrays A and B, has {domains}")
    a, b = store.array(split, "A"), store.array(split, "B")
    if tuple(a.shape) != tuple(b.shape):
        raise BenchmarkError(
            f"{p}: {split}/A has shape {tuple(a.shape)} but {split}/B has {tuple(b.shape)}; "
            "a paired split needs equal shapes"
        )
    for name, arr in (("A", a), ("B", b)):
        _check_tile_format(f"{p}:{split}/{name}", arr.dtype, tuple(arr.shape[1:]))
    n = int(a.shape[0])
    if n == 0:
        raise BenchmarkError(f"{p}: split {split!r} is empty; ingest data with a val split")
    hw = (int(a.shape[1]), int(a.shape[2]))
    return ValSet(
        source=str(p),
        kind="store",
        names=[f"{split}[{i}]" for i in range(n)],
        shapes=[hw] * n,
        manifest_hash=store.manifest_hash,
        _a=a,
        _b=b,
    )


def _check_tile_format(where: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    if np.dtype(dtype) != np.uint8:
        raise BenchmarkError(
            f"{where}: tiles are {np.dtype(dtype)}, served models take uint8 RGB; convert the "
            "tiles to 8 bits"
        )
    if len(shape) != 3 or shape[-1] != 3:
        raise BenchmarkError(f"{where}: tiles have shape {shape}, expected (H, W, 3) RGB")


def _list_images(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
            if f.stem in files:
                raise BenchmarkError(
                    f"{folder}: two files share the name {f.stem!r} ({files[f.stem].name}, "
                    f"{f.name}); keep one"
                )
            files[f.stem] = f
    return files


def read_tile(path: Path) -> np.ndarray:
    """One image file as uint8 RGB ``(H, W, 3)``; RGBA drops alpha; other formats refused."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            arr = np.asarray(tifffile.imread(path))
        except Exception as exc:  # tifffile raises many types for corrupt files
            raise BenchmarkError(f"{path}: cannot read TIFF ({exc})") from None
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                if im.mode in ("RGB", "RGBA"):
                    arr = np.asarray(im)
                elif im.mode in ("P", "PA"):
                    arr = np.asarray(im.convert("RGBA"))
                else:
                    raise BenchmarkError(
                        f"{path}: image mode {im.mode} is not 8-bit RGB; convert it to RGB"
                    )
        except (OSError, UnidentifiedImageError) as exc:
            raise BenchmarkError(f"{path}: cannot read image ({exc})") from None
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    _check_tile_format(str(path), arr.dtype, arr.shape)
    return np.ascontiguousarray(arr)


def _open_folder(p: Path) -> ValSet:
    da, db = p / "A", p / "B"
    if not (da.is_dir() and db.is_dir()):
        raise BenchmarkError(
            f"{p}: a folder val set needs subfolders A/ (inputs) and B/ (targets) with tiles "
            "matched by file name"
        )
    fa, fb = _list_images(da), _list_images(db)
    if not fa and not fb:
        raise BenchmarkError(f"{p}: A/ and B/ hold no images ({', '.join(IMAGE_SUFFIXES)})")
    only_a, only_b = sorted(set(fa) - set(fb)), sorted(set(fb) - set(fa))
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} in A/ without a target (e.g. {only_a[0]!r})")
        if only_b:
            parts.append(f"{len(only_b)} in B/ without an input (e.g. {only_b[0]!r})")
        raise BenchmarkError(f"{p}: unpaired tiles: {'; '.join(parts)}; pair them by file name")
    names = sorted(fa)
    a_tiles, b_tiles, shapes = [], [], []
    for name in names:
        ta, tb = read_tile(fa[name]), read_tile(fb[name])
        if ta.shape != tb.shape:
            raise BenchmarkError(
                f"{p}: tile {name!r} is {ta.shape} in A/ but {tb.shape} in B/; pairs need "
                "equal sizes"
            )
        a_tiles.append(ta)
        b_tiles.append(tb)
        shapes.append((int(ta.shape[0]), int(ta.shape[1])))
    return ValSet(str(p), "folder", names, shapes, None, a_tiles, b_tiles)
