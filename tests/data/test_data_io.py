"""Tile readers on real files written by the test in every supported format."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from stainbench.data.io import open_volume, read_image
from stainbench.errors import DataError

RNG = np.random.default_rng(7)
RGB8 = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)
RGBA8 = RNG.integers(0, 256, (20, 24, 4), dtype=np.uint8)
GRAY8 = RNG.integers(0, 256, (20, 24), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (20, 24), dtype=np.uint16)
RGB16 = RNG.integers(0, 65536, (20, 24, 3), dtype=np.uint16)
RGBA16 = RNG.integers(0, 65536, (20, 24, 4), dtype=np.uint16)


CASES = {
    "rgb8.png": (lambda p: Image.fromarray(RGB8).save(p), RGB8, []),
    "rgba8.png": (lambda p: Image.fromarray(RGBA8).save(p), RGBA8[..., :3], ["alpha"]),
    "gray8.png": (lambda p: Image.fromarray(GRAY8).save(p), GRAY8[..., None], []),
    "gray16.png": (lambda p: Image.fromarray(GRAY16).save(p), GRAY16[..., None], []),
    "rgb16.png": (lambda p: p.write_bytes(imagecodecs.png_encode(RGB16)), RGB16, []),
    "rgba16.png": (
        lambda p: p.write_bytes(imagecodecs.png_encode(RGBA16)),
        RGBA16[..., :3],
        ["alpha"],
    ),
    "rgb8.tif": (lambda p: tifffile.imwrite(p, RGB8, photometric="rgb"), RGB8, []),
    "rgb8_planar.tif": (
        lambda p: tifffile.imwrite(
            p, np.moveaxis(RGB8, -1, 0), photometric="rgb", planarconfig="separate"
        ),
        RGB8,
        ["planar"],
    ),
    "rgba8.tif": (
        lambda p: tifffile.imwrite(p, RGBA8, photometric="rgb", extrasamples=["unassalpha"]),
        RGBA8[..., :3],
        ["alpha"],
    ),
    "gray16.tif": (
        lambda p: tifffile.imwrite(p, GRAY16, photometric="minisblack"),
        GRAY16[..., None],
        [],
    ),
    "rgb16_deflate.tif": (
        lambda p: tifffile.imwrite(p, RGB16, photometric="rgb", compression="zlib"),
        RGB16,
        [],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_lossless_formats_read_exactly(tmp_path: Path, name: str) -> None:
    write, expected, conv = CASES[name]
    path = tmp_path / name
    write(path)
    img = read_image(path)
    assert img.pixels.dtype == expected.dtype
    np.testing.assert_array_equal(img.pixels, expected)
    for word in conv:
        assert any(word in c for c in img.conversions), img.conversions
    if not conv:
        assert img.conversions == []


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_reads_close_to_the_original(tmp_path: Path, mode: str) -> None:
    smooth = np.linspace(0, 255, 32 * 32 * 3).reshape(32, 32, 3).astype(np.uint8)
    src = smooth if mode == "RGB" else smooth[..., 0]
    path = tmp_path / "x.jpg"
    Image.fromarray(src).save(path, quality=95)
    img = read_image(path)
    assert img.format == "JPEG" and img.pixels.dtype == np.uint8
    assert img.pixels.shape == (32, 32, 3 if mode == "RGB" else 1)
    assert np.abs(img.pixels.astype(int) - src.reshape(img.pixels.shape)).mean() < 3


def test_palette_png_is_expanded(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    Image.fromarray(RGB8).convert("P").save(path)
    img = read_image(path)
    assert img.pixels.shape == (20, 24, 3)
    assert any("palette" in c for c in img.conversions)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty file"),
        (b"not an image at all", "cannot decode PNG"),
        (None, "cannot decode PNG"),  # truncated real PNG
    ],
)
def test_corrupt_files_give_one_line_errors(tmp_path: Path, content, match: str) -> None:
    path = tmp_path / "bad.png"
    if content is None:
        Image.fromarray(RGB8).save(path)
        path.write_bytes(path.read_bytes()[:60])
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        read_image(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_multipage_tiff_is_not_a_tile_and_floats_are_refused(tmp_path: Path) -> None:
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(DataError, match="is a volume"):
        read_image(stack)
    floats = tmp_path / "f.tif"
    tifffile.imwrite(floats, np.zeros((8, 8), np.float32))
    with pytest.raises(DataError, match="unsupported pixel type float32"):
        read_image(floats)
    with pytest.raises(DataError, match="unsupported file type"):
        read_image(tmp_path / "notes.txt")


def test_volume_readers(tmp_path: Path) -> None:
    vol = RNG.integers(0, 4000, (6, 10, 12), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", vol)
    src = open_volume(tmp_path / "v.tif")
    assert src.shape == (6, 10, 12, 1)
    np.testing.assert_array_equal(src.read(2, 5, 3, 8)[..., 0], vol[2:5, 3:8])
    src.close()
    rgb = RNG.integers(0, 256, (4, 10, 12, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    src = open_volume(tmp_path / "rgb.tif")
    assert src.shape == (4, 10, 12, 3)
    np.testing.assert_array_equal(src.read(0, 4), rgb)
    src.close()

    import zarr

    g = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    czyx = RNG.integers(0, 256, (2, 5, 10, 12), dtype=np.uint8)
    g.create_array("0", data=czyx, chunks=(1, 2, 5, 6))
    axes = [{"name": n} for n in ("c", "z", "y", "x")]
    g.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": axes, "datasets": [{"path": "0"}]}],
    }
    src = open_volume(tmp_path / "img.ome.zarr")
    assert src.format == "OME-Zarr" and src.shape == (5, 10, 12, 2)
    np.testing.assert_array_equal(src.read(1, 4, 2, 9), np.moveaxis(czyx, 0, -1)[1:4, 2:9])

    z5 = zarr.create_array(str(tmp_path / "five.zarr"), shape=(2, 2, 3, 4, 5), dtype="u1")
    assert z5.ndim == 5
    with pytest.raises(DataError, match="unexpected number of dimensions"):
        open_volume(tmp_path / "five.zarr")
