"""Ingestion of real files into stores: layouts, split, manifest, failures, interruption."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from stainbench.cli.main import main
from stainbench.data.info import describe_store
from stainbench.data.ingest import IngestOptions, ingest
from stainbench.data.stats import FIELDS, PERCENTILES
from stainbench.data.store import open_store
from stainbench.errors import DataError


def _tiles(n: int, seed: int = 0, size: tuple[int, int] = (16, 20)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def _paired_folder(root: Path, n: int = 10) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    (root / "A").mkdir(parents=True)
    (root / "B").mkdir()
    pairs = {}
    for i, a in enumerate(_tiles(n)):
        b = 255 - a
        name = f"tile_{i:03d}"
        Image.fromarray(a).save(root / "A" / f"{name}.png")
        # B side in another lossless format, matched by name without extension
        tifffile.imwrite(root / "B" / f"{name}.tif", b, photometric="rgb")
        pairs[name] = (a, b)
    return pairs


def test_paired_folders_round_trip_without_leakage(tmp_path: Path) -> None:
    pairs = _paired_folder(tmp_path / "src")
    (tmp_path / "src" / "A" / "README.txt").write_text("not an image")
    res = ingest(tmp_path / "src", tmp_path / "s.zarr", IngestOptions(val_fraction=0.3, seed=1))
    assert res.counts == {"train": {"A": 7, "B": 7}, "val": {"A": 3, "B": 3}}
    store = open_store(tmp_path / "s.zarr")
    man = store.manifest
    by_split: dict[str, list[str]] = {"train": [], "val": []}
    for s in man["sources"]:
        if s["domain"] == "A":
            by_split[s["split"]].append(Path(s["path"]).stem)
        assert s["sha256"] == hashlib.sha256(Path(s["path"]).read_bytes()).hexdigest()
    assert not set(by_split["train"]) & set(by_split["val"])
    for split, names in by_split.items():
        a, b = store.array(split, "A")[...], store.array(split, "B")[...]
        for i, name in enumerate(names):
            np.testing.assert_array_equal(a[i], pairs[name][0])
            np.testing.assert_array_equal(b[i], pairs[name][1])
    assert man["formats"] == {"PNG": 10, "TIFF": 10}
    assert man["ignored"] == [str(tmp_path / "src" / "A" / "README.txt")]
    assert man["failures"] == []
    # same seed, same split; other seed, other split
    again = ingest(tmp_path / "src", tmp_path / "t.zarr", IngestOptions(val_fraction=0.3, seed=1))
    assert (
        again.manifest_hash != ""
        and open_store(tmp_path / "t.zarr").manifest["split"] == man["split"]
    )
    other = ingest(tmp_path / "src", tmp_path / "u.zarr", IngestOptions(val_fraction=0.3, seed=2))
    val_other = [
        Path(s["path"]).stem
        for s in open_store(tmp_path / "u.zarr").manifest["sources"]
        if s["split"] == "val" and s["domain"] == "A"
    ]
    assert other.counts["val"]["A"] == 3 and sorted(val_other) != sorted(by_split["val"])


def test_stored_stats_equal_numpy_on_the_whole_array(tmp_path: Path) -> None:
    _paired_folder(tmp_path / "src", n=6)
    ingest(tmp_path / "src", tmp_path / "s.zarr", IngestOptions(val_fraction=0.2))
    store = open_store(tmp_path / "s.zarr")
    for split in store.splits:
        for d in ("A", "B"):
            x = store.array(split, d)[...].reshape(-1, 3).astype(np.float64)
            ds = store.stats["splits"][split][d]
            ref = [x.mean(0), x.std(0), x.min(0), x.max(0)]
            ref += [np.percentile(x, q, axis=0) for q in PERCENTILES]
            np.testing.assert_allclose(
                np.stack([ds[f] for f in FIELDS], 1), np.stack(ref, 1), rtol=1e-12, atol=1e-9
            )


def test_aligned_ab_images(tmp_path: Path) -> None:
    src = tmp_path / "ab"
    src.mkdir()
    tiles = _tiles(4, size=(16, 32))
    for i, t in enumerate(tiles):
        Image.fromarray(t).save(src / f"{i}.png")
    ingest(src, tmp_path / "s.zarr", IngestOptions(layout="aligned", val_fraction=0.25))
    store = open_store(tmp_path / "s.zarr")
    assert store.array("train", "A").shape == (3, 16, 16, 3)
    names = [Path(s["path"]).stem for s in store.manifest["sources"] if s["domain"] == "A"]
    splits = [s["split"] for s in store.manifest["sources"] if s["domain"] == "A"]
    train_names = [n for n, s in zip(names, splits, strict=True) if s == "train"]
    a, b = store.array("train", "A")[...], store.array("train", "B")[...]
    for i, n in enumerate(train_names):
        np.testing.assert_array_equal(a[i], tiles[int(n)][:, :16])
        np.testing.assert_array_equal(b[i], tiles[int(n)][:, 16:])


def test_real_rgba_he_as_unpaired_region_split(tmp_path: Path, shared_data: Path) -> None:
    src = tmp_path / "he"
    for d, name in (("A", "source.png"), ("B", "target.png")):
        (src / d).mkdir(parents=True)
        shutil.copy(shared_data / "torchstain-he" / name, src / d / name)
    res = ingest(src, tmp_path / "he.zarr", IngestOptions(layout="unpaired", tile=64))
    store = open_store(tmp_path / "he.zarr")
    assert store.kind == "unpaired" and res.split_method == "region"
    a_full = np.asarray(Image.open(src / "A" / "source.png"))
    assert a_full.shape[2] == 4  # real RGBA
    # 438 rows: the bottom 64 (0.1 of the rows, rounded to whole tiles) are validation; the
    # 374 rows above give 5 tile rows (edges dropped); 584 columns give 9 tile columns
    assert store.array("train", "A").shape == (5 * 9, 64, 64, 3)
    assert store.array("val", "A").shape == (9, 64, 64, 3)
    np.testing.assert_array_equal(store.array("train", "A")[10], a_full[64:128, 64:128, :3])
    val_first = a_full[a_full.shape[0] - 64 :, :64, :3]
    np.testing.assert_array_equal(store.array("val", "A")[0], val_first)
    assert {c["what"] for c in store.manifest["conversions"]} == {"alpha channel dropped"}
    assert store.stats["splits"]["train"]["B"]["channels"] == 3


def test_bad_pairs_fail_or_are_skipped_and_listed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _paired_folder(src, n=5)
    Image.fromarray(_tiles(1, size=(10, 10))[0]).save(src / "A" / "small.png")
    tifffile.imwrite(src / "B" / "small.tif", _tiles(1, size=(12, 10))[0], photometric="rgb")
    (src / "A" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    tifffile.imwrite(src / "B" / "broken.tif", _tiles(1)[0], photometric="rgb")
    with pytest.raises(DataError, match=r"broken\.png: cannot decode PNG") as info:
        ingest(src, tmp_path / "s.zarr", IngestOptions())
    assert "\n" not in str(info.value)
    assert not (tmp_path / "s.zarr").exists()  # a failed ingestion leaves nothing behind
    Image.fromarray(_tiles(1)[0]).save(src / "A" / "lonely.png")
    with pytest.raises(DataError, match=r"lonely\.png: no partner"):
        ingest(src, tmp_path / "s.zarr", IngestOptions())
    res = ingest(src, tmp_path / "s.zarr", IngestOptions(on_error="skip", val_fraction=0.2))
    reasons = {Path(f["path"]).name: f["reason"] for f in res.failures}
    assert set(reasons) == {"broken.png", "lonely.png", "small.png"}
    assert "no partner" in reasons["lonely.png"]
    assert "pair differs in size: A is 10x10, B is 12x10" in reasons["small.png"]
    assert describe_store(tmp_path / "s.zarr").failures == res.failures
    assert sum(c["A"] for c in res.counts.values()) == 5


def test_size_and_channel_mismatch_within_a_domain(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _paired_folder(src, n=4)
    gray = np.zeros((16, 20), np.uint8)
    Image.fromarray(gray).save(src / "A" / "tile_003.png")  # replaces an RGB tile with gray
    res = ingest(src, tmp_path / "s.zarr", IngestOptions(on_error="skip", val_fraction=0))
    assert len(res.failures) == 1 and "channel" in res.failures[0]["reason"]


@pytest.mark.parametrize("what", ["empty", "no_b"])
def test_bad_folders(tmp_path: Path, what: str) -> None:
    src = tmp_path / "src"
    (src / "A").mkdir(parents=True)
    if what == "empty":
        (src / "B").mkdir()
        Image.fromarray(_tiles(1)[0]).save(src / "B" / "x.png")
        match = "no PNG, JPEG or TIFF files"
    else:
        match = "needs .*A and .*B"
    with pytest.raises(DataError, match=match):
        ingest(src, tmp_path / "s.zarr", IngestOptions())


def test_existing_store_refused_unless_force(tmp_path: Path) -> None:
    _paired_folder(tmp_path / "src", n=4)
    ingest(tmp_path / "src", tmp_path / "s.zarr", IngestOptions())
    with pytest.raises(DataError, match="already holds a stainbench store; pass --force"):
        ingest(tmp_path / "src", tmp_path / "s.zarr", IngestOptions())
    ingest(tmp_path / "src", tmp_path / "s.zarr", IngestOptions(force=True))


def test_interrupted_ingestion_leaves_nothing_behind(tmp_path: Path) -> None:
    # the store is written into a hidden sibling and renamed into place only when complete
    _paired_folder(tmp_path / "src", n=6)

    def interrupt(task: str, done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest(tmp_path / "src", tmp_path / "s.zarr", IngestOptions(), progress=interrupt)
    assert not (tmp_path / "s.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".s.zarr.")]
    ingest(tmp_path / "src", tmp_path / "s.zarr", IngestOptions())
    assert open_store(tmp_path / "s.zarr").kind == "paired"


def test_cli_ingest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _paired_folder(tmp_path / "src", n=4)
    out = tmp_path / "s.zarr"
    assert main(["data", "ingest", str(tmp_path / "src"), "--out", str(out)]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["data", "ingest", str(tmp_path / "src"), "--out", str(out)]) == 1
    assert "pass --force" in capsys.readouterr().err
    code = main(["data", "ingest", str(tmp_path / "src"), "-o", str(out), "--layout", "x"])
    assert code == 1 and "unknown layout" in capsys.readouterr().err


def test_paired_jpeg_region_split_with_tiles(tmp_path: Path) -> None:
    """One large JPEG pair: split by region, cut into tiles; no tile crosses the boundary."""
    src = tmp_path / "big"
    (src / "A").mkdir(parents=True)
    (src / "B").mkdir()
    yy, xx = np.mgrid[0:100, 0:70]
    smooth = np.stack([yy * 2, xx * 3, (yy + xx)], -1).astype(np.uint8)
    Image.fromarray(smooth).save(src / "A" / "slide.jpg", quality=95)
    Image.fromarray(255 - smooth).save(src / "B" / "slide.jpg", quality=95)
    res = ingest(src, tmp_path / "s.zarr", IngestOptions(tile=16, val_fraction=0.2))
    assert res.split_method == "region"
    store = open_store(tmp_path / "s.zarr")
    # 100 rows: the bottom 16 (0.2 * 100 rounded to whole 16 px tiles) are validation, the
    # 84 above give 5 tile rows; 70 columns give 4 tile columns
    assert store.array("train", "A").shape == (5 * 4, 16, 16, 3)
    assert store.array("val", "B").shape == (4, 16, 16, 3)
    decoded = np.asarray(Image.open(src / "A" / "slide.jpg"))
    np.testing.assert_array_equal(store.array("val", "A")[0], decoded[84:100, 0:16])
    assert store.manifest["formats"] == {"JPEG": 2}


def test_cli_info_shows_an_incomplete_store(tmp_path: Path, capsys) -> None:
    from stainbench.data.store import create_store

    create_store(tmp_path / "half.zarr", "paired")
    assert main(["data", "info", str(tmp_path / "half.zarr")]) == 0
    assert "INCOMPLETE" in capsys.readouterr().out
