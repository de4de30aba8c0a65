"""Opening validation sets: a folder of paired tiles and a real zarr store, and bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stainbench.bench.valset import open_val_set
from stainbench.errors import BenchmarkError


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        import tifffile

        tifffile.imwrite(path, arr)
    else:
        Image.fromarray(arr).save(path)


def _tile(seed: int, h: int = 32, w: int = 32, c: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_folder_val_set_pairs_by_name(tmp_path: Path) -> None:
    a0, b0, a1, b1 = _tile(0), _tile(1), _tile(2, c=4), _tile(3)
    _write(tmp_path / "A" / "t0.png", a0)
    _write(tmp_path / "B" / "t0.tif", b0)  # other extension, same stem
    _write(tmp_path / "A" / "t1.png", a1)  # RGBA: alpha dropped
    _write(tmp_path / "B" / "t1.png", b1)
    _write(tmp_path / "A" / "t2.png", _tile(4, 64, 32))
    _write(tmp_path / "B" / "t2.png", _tile(5, 64, 32))
    (tmp_path / "A" / "notes.txt").write_text("ignored")
    vs = open_val_set(tmp_path)
    assert vs.kind == "folder" and len(vs) == 3
    assert vs.names == ["t0", "t1", "t2"]
    assert vs.shapes == [(32, 32), (32, 32), (64, 32)]
    a, b = vs.get([1, 0])
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a[0], a1[..., :3])
    np.testing.assert_array_equal(b[1], b0)
    assert vs.batches(4) == [[0, 1], [2]]
    assert vs.batches(1) == [[0], [1], [2]]
    assert len(vs.subset(2)) == 2
    with pytest.raises(BenchmarkError, match="differ in size"):
        vs.get([0, 2])
    with pytest.raises(BenchmarkError, match=r"tile 't0' is 32x32 but model 'unet_x' needs .* 64"):
        vs.check_size_multiple("unet_x", 64)
    vs.check_size_multiple("unet_x", 16)  # 32 and 64 are multiples of 16
    assert vs.describe()["tile_sizes"] == ["32x32", "64x32"]


def test_folder_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="not found"):
        open_val_set(tmp_path / "missing")
    with pytest.raises(BenchmarkError, match="needs subfolders A/"):
        open_val_set(tmp_path)
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    with pytest.raises(BenchmarkError, match="hold no images"):
        open_val_set(tmp_path)
    _write(tmp_path / "A" / "x.png", _tile(0))
    _write(tmp_path / "B" / "y.png", _tile(1))
    with pytest.raises(BenchmarkError, match=r"unpaired tiles: 1 in A/ .*'x'.*1 in B/ .*'y'"):
        open_val_set(tmp_path)
    (tmp_path / "B" / "y.png").unlink()
    _write(tmp_path / "B" / "x.png", _tile(1, 16, 16))
    with pytest.raises(BenchmarkError, match="equal sizes"):
        open_val_set(tmp_path)
    _write(tmp_path / "B" / "x.png", _tile(1)[..., 0])  # grey
    with pytest.raises(BenchmarkError, match="not 8-bit RGB"):
        open_val_set(tmp_path)
    (tmp_path / "B" / "x.png").write_bytes(b"not a png")
    with pytest.raises(BenchmarkError, match="cannot read image"):
        open_val_set(tmp_path)


def _make_store(path: Path, a: np.ndarray, b: np.ndarray, kind: str = "paired") -> None:
    from stainbench.data.store import create_store, finalize_store

    group = create_store(path, kind)
    for split, (xa, xb) in {"train": (a[:1], b[:1]), "val": (a, b)}.items():
        g = group.create_group(split)
        for name, x in (("A", xa), ("B", xb)):
            arr = g.create_array(name, shape=x.shape, dtype=x.dtype, chunks=(1, *x.shape[1:]))
            arr[...] = x
    finalize_store(group, {"test": True}, None)


def test_store_val_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    _make_store(tmp_path / "s.zarr", a, b)
    vs = open_val_set(tmp_path / "s.zarr")
    assert vs.kind == "store" and len(vs) == 5 and vs.manifest_hash
    xa, xb = vs.get([3, 1])
    np.testing.assert_array_equal(xa, a[[3, 1]])
    np.testing.assert_array_equal(xb, b[[3, 1]])
    assert vs.names[2] == "val[2]"
    assert vs.batches(2) == [[0, 1], [2, 3], [4]]
    assert len(vs.subset(3)) == 3
    with pytest.raises(BenchmarkError, match="no split 'test'"):
        open_val_set(tmp_path / "s.zarr", split="test")


def test_a_volume_store_is_refused_with_the_reason(tmp_path: Path) -> None:
    from stainbench.data.demo import make_demo_store

    demo = make_demo_store(tmp_path / "demo", tile=32, n_train=4, n_val=4)
    with pytest.raises(BenchmarkError, match="volume stores are not supported as --val-set"):
        open_val_set(demo.volume)


def test_store_bad_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    _make_store(tmp_path / "u.zarr", a, a, kind="unpaired")
    with pytest.raises(BenchmarkError, match="unpaired store has no paired targets"):
        open_val_set(tmp_path / "u.zarr")
    _make_store(tmp_path / "w.zarr", a.astype(np.uint16), a.astype(np.uint16))
    with pytest.raises(BenchmarkError, match="uint16, served models take uint8"):
        open_val_set(tmp_path / "w.zarr")
    _make_store(tmp_path / "e.zarr", a, a)
    import zarr

    g = zarr.open_group(str(tmp_path / "e.zarr" / "val"), mode="r+")
    for name in ("A", "B"):
        del g[name]
        g.create_array(name, shape=(0, 16, 16, 3), dtype=np.uint8, chunks=(1, 16, 16, 3))
    with pytest.raises(BenchmarkError, match="split 'val' is empty"):
        open_val_set(tmp_path / "e.zarr")
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "zarr.json").write_text("{}")
    with pytest.raises(BenchmarkError, match="not a stainbench store"):
        open_val_set(tmp_path / "bad.zarr")
