"""Readers for 2D tiles (PNG, JPEG, TIFF) and 3D volumes (multi-page TIFF, zarr, OME-Zarr).

Everything comes out as uint8 or uint16 with channels last: tiles ``(H, W, C)``, volumes
``(Z, Y, X, C)``. What had to change on the way (alpha dropped, palette expanded, planar
samples moved last) is returned as a list of human-readable ``conversions`` for the manifest.
Decoding uses the field's libraries: Pillow, tifffile, imagecodecs (16-bit colour PNG, which
Pillow would silently truncate to 8 bits) and zarr.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stainbench.errors import DataError

TILE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
VOLUME_SUFFIXES = (".tif", ".tiff", ".zarr", ".ome.zarr")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class ImageData:
    """One decoded tile: ``pixels`` uint8/uint16 ``(H, W, C)``; ``sha256`` of the file bytes."""

    path: Path
    pixels: np.ndarray
    format: str
    source_mode: str
    sha256: str
    conversions: list[str] = field(default_factory=list)


def tile_format(path: Path) -> str | None:
    """``"PNG"``, ``"JPEG"``, ``"TIFF"`` from the suffix, or None for other files."""
    return TILE_FORMATS.get(path.suffix.lower())


def read_image(path: str | Path) -> ImageData:
    """Decode one tile file. Raises :class:`DataError` naming the file on any problem."""
    p = Path(path)
    fmt = tile_format(p)
    if fmt is None:
        raise DataError(f"{p}: unsupported file type (use PNG, JPEG or TIFF)")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if not raw:
        raise DataError(f"{p}: empty file")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        if fmt == "TIFF":
            pixels, mode, conv = _decode_tiff(raw)
        elif fmt == "PNG" and _png_is_16bit_colour(raw):
            pixels, mode, conv = _decode_png16(raw)
        else:
            pixels, mode, conv = _decode_pillow(raw)
    except DataError as exc:
        raise DataError(f"{p}: {exc}") from None
    except Exception as exc:  # decoder errors of all kinds: corrupt or truncated data
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{p}: cannot decode {fmt} ({reason})") from None
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise DataError(f"{p}: image has no pixels")
    return ImageData(p, np.ascontiguousarray(pixels), fmt, mode, digest, conv)


def _png_is_16bit_colour(raw: bytes) -> bool:
    if len(raw) < 26 or not raw.startswith(_PNG_MAGIC) or raw[12:16] != b"IHDR":
        return False
    bit_depth, colour_type = raw[24], raw[25]
    return bit_depth == 16 and colour_type in (2, 4, 6)


def _decode_png16(raw: bytes) -> tuple[np.ndarray, str, list[str]]:
    import imagecodecs

    pixels = np.asarray(imagecodecs.png_decode(raw))
    colour_type = raw[25]
    mode = {2: "RGB;16", 4: "LA;16", 6: "RGBA;16"}[colour_type]
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    conv: list[str] = []
    if colour_type in (4, 6):
        pixels = pixels[..., :-1]
        conv.append("alpha channel dropped")
    return pixels.astype(np.uint16, copy=False), mode, conv


def _decode_pillow(raw: bytes) -> tuple[np.ndarray, str, list[str]]:
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as im:
        im.load()
        mode = im.mode
        conv: list[str] = []
        if mode in ("RGB", "L"):
            arr = np.asarray(im)
        elif mode in ("RGBA", "LA"):
            arr = np.asarray(im)[..., :-1]
            conv.append("alpha channel dropped")
        elif mode in ("P", "PA"):
            has_alpha = mode == "PA" or "transparency" in im.info
            arr = np.asarray(im.convert("RGB"))
            conv.append("palette expanded to RGB" + (", alpha dropped" if has_alpha else ""))
        elif mode == "1":
            arr = np.asarray(im.convert("L"))
            conv.append("1-bit converted to 8-bit (0/255)")
        elif mode.startswith("I;16"):
            arr = np.asarray(im).astype(np.uint16)
        elif mode == "I":
            arr = np.asarray(im)
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise DataError("32-bit integer image with values outside 0..65535")
            arr = arr.astype(np.uint16)
            conv.append("32-bit integer stored as uint16 (values fit)")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            arr = np.asarray(im.convert("RGB"))
            conv.append(f"{mode} converted to RGB")
        else:
            raise DataError(f"unsupported image mode {mode!r} (use 8/16-bit gray, RGB or RGBA)")
    if arr.ndim == 2:
        arr = arr[..., None]
    return arr, mode, conv


def _decode_tiff(raw: bytes) -> tuple[np.ndarray, str, list[str]]:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        series = tif.series[0]
        axes = series.axes
        arr = series.asarray()
        photometric = tif.pages[0].photometric  # type: ignore[union-attr]
    arr, axes, conv = _channels_last(np.asarray(arr), axes)
    planes = [a for a in axes if a not in "YXS"]
    if planes:
        n = int(np.prod([arr.shape[axes.index(a)] for a in planes]))
        raise DataError(
            f"TIFF with {n} pages/planes (axes {axes}) is a volume, not a tile; "
            "ingest it with --layout volume"
        )
    arr = _check_dtype(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    mode = f"{getattr(photometric, 'name', photometric)} {arr.shape[-1]}x{arr.dtype.name}"
    if arr.shape[-1] in (2, 4) and int(photometric) in (1, 2):  # MINISBLACK / RGB + alpha
        arr = arr[..., :-1]
        conv.append("alpha channel dropped")
    return arr, mode, conv


def _channels_last(arr: np.ndarray, axes: str) -> tuple[np.ndarray, str, list[str]]:
    """Squeeze singleton axes other than Y/X and move samples (S or C) last."""
    conv: list[str] = []
    keep = [i for i, a in enumerate(axes) if arr.shape[i] != 1 or a in "YX"]
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    for sample_axis in ("S", "C"):
        if sample_axis in axes and axes.index(sample_axis) != len(axes) - 1:
            i = axes.index(sample_axis)
            arr = np.moveaxis(arr, i, -1)
            axes = axes[:i] + axes[i + 1 :] + "S"
            conv.append("planar samples moved to the last axis")
        elif sample_axis in axes:
            axes = axes[:-1] + "S"
    return arr, axes, conv


def _check_dtype(arr: np.ndarray) -> np.ndarray:
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    raise DataError(
        f"unsupported pixel type {arr.dtype} (stainbench stores uint8/uint16; rescale the data "
        "to one of them first)"
    )


# --------------------------------------------------------------------------------------------
# Volumes


class VolumeSource:
    """A volume readable block by block as ``(z, y, x, C)`` uint8/uint16 (never all at once).

    ``shape`` is ``(Z, Y, X, C)``; :meth:`read` returns ``[z0:z1, y0:y1]`` with all x.
    """

    path: Path
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    format: str
    conversions: list[str]

    def read(self, z0: int, z1: int, y0: int = 0, y1: int | None = None) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release file handles."""


class TiffVolume(VolumeSource):
    """Multi-page TIFF: one page per z plane (axes ZYX / IYX / QYX, optionally with samples)."""

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        self.format = "TIFF"
        try:
            self._tif = tifffile.TiffFile(str(path))
            series = self._tif.series[0]
        except Exception as exc:
            raise DataError(f"{path}: cannot read TIFF ({str(exc).splitlines()[0]})") from None
        axes, shape = series.axes, tuple(series.shape)
        keep = [i for i, a in enumerate(axes) if shape[i] != 1 or a in "YX"]
        axes_k = "".join(axes[i] for i in keep)
        shape_k = [shape[i] for i in keep]
        if axes_k in ("YX", "YXS"):
            z, planes = 1, [axes_k]
        elif len(axes_k) >= 3 and axes_k[0] in "ZIQ" and axes_k[1:] in ("YX", "YXS"):
            z, planes = shape_k[0], [axes_k[1:]]
        else:
            self._tif.close()
            raise DataError(
                f"{path}: TIFF axes {axes} {shape} not supported as a volume "
                "(expected one page per z plane: ZYX or ZYXS)"
            )
        c = shape_k[-1] if planes[0] == "YXS" else 1
        self._pages = series.pages
        if len(self._pages) != z:
            self._tif.close()
            raise DataError(f"{path}: {len(self._pages)} pages for {z} z planes")
        self.shape = (
            int(z),
            int(shape_k[-3 if c > 1 else -2]),
            int(shape_k[-2 if c > 1 else -1]),
            c,
        )
        self.dtype = np.dtype(series.dtype)
        _check_dtype(np.zeros(0, self.dtype))
        self.conversions = []

    def read(self, z0: int, z1: int, y0: int = 0, y1: int | None = None) -> np.ndarray:
        y1 = self.shape[1] if y1 is None else y1
        out = np.empty((z1 - z0, y1 - y0, self.shape[2], self.shape[3]), self.dtype)
        for k, z in enumerate(range(z0, z1)):
            try:
                plane = np.asarray(self._pages[z].asarray())  # type: ignore[union-attr]
            except Exception as exc:
                raise DataError(f"{self.path}: page {z}: cannot decode ({exc})") from None
            out[k] = plane.reshape(self.shape[1], self.shape[2], self.shape[3])[y0:y1]
        return out

    def close(self) -> None:
        self._tif.close()


class ZarrVolume(VolumeSource):
    """A zarr array (v2 or v3), or the full-resolution level of an OME-Zarr image."""

    def __init__(self, path: Path) -> None:
        import zarr

        self.path = path
        self.conversions: list[str] = []
        try:
            node = zarr.open(str(path), mode="r")
        except Exception as exc:
            raise DataError(f"{path}: cannot open as zarr ({str(exc).splitlines()[0]})") from None
        axes: list[str] | None = None
        if isinstance(node, zarr.Group):
            attrs = dict(node.attrs)
            ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
            if not ms:
                raise DataError(f"{path}: zarr group without OME multiscales metadata")
            level = ms[0]["datasets"][0]["path"]
            axes = [str(a["name"] if isinstance(a, dict) else a).lower() for a in ms[0]["axes"]]
            node = node[level]
            self.format = "OME-Zarr"
            self.conversions.append(f"OME-Zarr level {level!r} (full resolution) read")
        else:
            self.format = "zarr"
        arr = node
        shape = tuple(int(s) for s in arr.shape)
        if axes is None:
            if len(shape) == 3:
                axes = ["z", "y", "x"]
            elif len(shape) == 4 and shape[-1] <= 4:
                axes = ["z", "y", "x", "c"]
            elif len(shape) == 4 and shape[0] <= 4:
                axes = ["c", "z", "y", "x"]
            else:
                raise DataError(
                    f"{path}: array of shape {shape} has an unexpected number of dimensions "
                    "(expected ZYX, ZYXC or CZYX with C <= 4)"
                )
        if len(axes) != len(shape):
            raise DataError(f"{path}: {len(axes)} axes in the metadata, array has {len(shape)}")
        for a, n in zip(axes, shape, strict=True):
            if a not in ("z", "y", "x", "c") and n != 1:
                raise DataError(f"{path}: axis {a!r} has size {n}; only one is supported")
        if "y" not in axes or "x" not in axes:
            raise DataError(f"{path}: no y/x axes in {axes}")
        self._arr = arr
        self._axes = axes
        size = dict(zip(axes, shape, strict=True))
        self.shape = (size.get("z", 1), size["y"], size["x"], size.get("c", 1))
        self.dtype = np.dtype(arr.dtype)
        _check_dtype(np.zeros(0, self.dtype))
        if "c" in axes and axes.index("c") != len(axes) - 1:
            self.conversions.append("channel axis moved last")

    def read(self, z0: int, z1: int, y0: int = 0, y1: int | None = None) -> np.ndarray:
        y1 = self.shape[1] if y1 is None else y1
        index: list[Any] = []
        for a in self._axes:
            index.append(
                slice(z0, z1)
                if a == "z"
                else slice(y0, y1)
                if a == "y"
                else slice(None)
                if a in ("x", "c")
                else 0
            )
        block = np.asarray(self._arr[tuple(index)])
        present = [a for a in self._axes if a in ("z", "y", "x", "c")]
        order = [present.index(a) for a in ("z", "y", "x", "c") if a in present]
        block = np.transpose(block, order)
        if "z" not in present:
            block = block[None]
        if "c" not in present:
            block = block[..., None]
        return block


def open_volume(path: str | Path) -> VolumeSource:
    """Open a volume file or directory: ``.tif``/``.tiff`` (multi-page) or a zarr store."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    if p.is_dir():
        if any((p / n).exists() for n in ("zarr.json", ".zarray", ".zgroup")):
            return ZarrVolume(p)
        raise DataError(f"{p}: directory is not a zarr array or OME-Zarr image")
    if p.suffix.lower() in (".tif", ".tiff"):
        return TiffVolume(p)
    raise DataError(f"{p}: unsupported volume format (use multi-page TIFF, zarr or OME-Zarr)")
