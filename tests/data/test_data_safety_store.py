"""Replacing a store never loses it; promised splits are never silently empty; damaged
stores (a deleted array or chunk file) are reported, not read as zeros.

Real PNG/TIFF files written here, real zarr stores on disk, the real CLI entry point.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import stainbench.data.ingest as ingest_mod
from stainbench.cli.main import main
from stainbench.data.info import describe_store
from stainbench.data.ingest import IngestOptions, ingest
from stainbench.data.stats import recompute_store_stats
from stainbench.data.store import check_target, open_store
from stainbench.errors import DataError

TILE = 16


def _folder(root: Path, n: int = 4, seed: int = 0, black: int | None = None) -> None:
    """``root/A``, ``root/B``: ``n`` 32x48 RGB pairs (6 tiles of 16 each); pair ``black``
    is all zero (its tile chunks are never written by zarr)."""
    rng = np.random.default_rng(seed)
    for d in "AB":
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = rng.integers(1, 256, (32, 48, 3), dtype=np.uint8)
        if i == black:
            a[:] = 0
        Image.fromarray(a).save(root / "A" / f"q{i}.png")
        Image.fromarray(255 - a if i != black else a).save(root / "B" / f"q{i}.png")


def _snapshot(path: Path) -> dict[str, str]:
    """sha256 of every file below ``path`` by relative path."""
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    _folder(tmp_path / "src")
    out = tmp_path / "s.zarr"
    ingest(tmp_path / "src", out, IngestOptions(tile=TILE, val_fraction=0.25))
    return out


def test_force_with_a_failing_input_keeps_the_old_store(tmp_path: Path, good: Path) -> None:
    before = _snapshot(good)
    tile = np.asarray(open_store(good).array("train", "A")[0])
    _folder(tmp_path / "bad", seed=1)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "bad" / "A" / "small.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "bad" / "B" / "small.png")
    with pytest.raises(DataError, match="smaller than one 16x16 tile"):
        ingest(tmp_path / "bad", good, IngestOptions(tile=TILE, force=True))
    assert _snapshot(good) == before
    np.testing.assert_array_equal(open_store(good).array("train", "A")[0], tile)
    assert _siblings(good) == []


def test_force_with_a_corrupt_input_keeps_the_old_store_via_cli(
    tmp_path: Path, good: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(good)
    _folder(tmp_path / "bad", seed=1)
    (tmp_path / "bad" / "A" / "q2.png").write_bytes(b"not a png")
    code = main(["data", "ingest", str(tmp_path / "bad"), "-o", str(good), "--tile", "16"])
    assert code == 1 and "pass --force" in capsys.readouterr().err
    args = ["data", "ingest", str(tmp_path / "bad"), "-o", str(good), "--tile", "16", "--force"]
    assert main(args) == 1
    assert "cannot decode" in capsys.readouterr().err
    assert _snapshot(good) == before and _siblings(good) == []


def test_ctrl_c_mid_ingest_keeps_the_old_store(
    tmp_path: Path, good: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(good)
    _folder(tmp_path / "new", n=6, seed=2)
    real_add = ingest_mod._Appender.add
    calls = {"n": 0}

    def add_then_interrupt(self: ingest_mod._Appender, tiles: np.ndarray, name: str) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        real_add(self, tiles, name)

    monkeypatch.setattr(ingest_mod._Appender, "add", add_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        ingest(tmp_path / "new", good, IngestOptions(tile=TILE, force=True))
    assert calls["n"] == 4
    assert _snapshot(good) == before and _siblings(good) == []
    # interrupted first ingestion: nothing at all is left behind
    with pytest.raises(KeyboardInterrupt):
        ingest(tmp_path / "new", tmp_path / "fresh.zarr", IngestOptions(tile=TILE))
    assert not (tmp_path / "fresh.zarr").exists() and _siblings(tmp_path / "fresh.zarr") == []
    monkeypatch.setattr(ingest_mod._Appender, "add", real_add)
    res = ingest(tmp_path / "new", good, IngestOptions(tile=TILE, force=True))
    assert open_store(good).manifest_hash == res.manifest_hash != before


def test_force_replaces_the_remains_of_an_interrupted_delete(tmp_path: Path, good: Path) -> None:
    (good / "zarr.json").unlink()  # what an rmtree interrupted after the root file leaves
    shutil.rmtree(good / "train")
    with pytest.raises(DataError, match=r"remains of a store.*pass --force"):
        check_target(good, force=False)
    res = ingest(tmp_path / "src", good, IngestOptions(tile=TILE, force=True))
    assert open_store(good).manifest_hash == res.manifest_hash


def test_a_foreign_folder_is_never_replaced(tmp_path: Path) -> None:
    _folder(tmp_path / "src")
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match=r"not a zarr store; refusing.*rm -r"):
        ingest(tmp_path / "src", other, IngestOptions(tile=TILE, force=True))
    assert (other / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_skip_that_empties_the_val_split_fails_and_writes_nothing(
    tmp_path: Path, good: Path
) -> None:
    before = _snapshot(good)
    val_names = {
        Path(s["path"]).stem for s in open_store(good).manifest["sources"] if s["split"] == "val"
    }
    assert val_names  # the same folder and seed give the same split below
    shutil.copytree(tmp_path / "src", tmp_path / "broken")
    for name in val_names:
        (tmp_path / "broken" / "A" / f"{name}.png").write_bytes(b"garbage")
    opts = IngestOptions(tile=TILE, val_fraction=0.25, on_error="skip", force=True)
    with pytest.raises(DataError, match=r"split 'val' would be empty.*--val-fraction 0"):
        ingest(tmp_path / "broken", good, opts)
    assert _snapshot(good) == before
    with pytest.raises(DataError, match="split 'val' would be empty"):
        ingest(tmp_path / "broken", tmp_path / "n.zarr", opts)
    assert not (tmp_path / "n.zarr").exists()
    # with no validation split asked for, skipping is fine
    res = ingest(
        tmp_path / "broken",
        tmp_path / "n.zarr",
        IngestOptions(tile=TILE, val_fraction=0, on_error="skip"),
    )
    assert set(res.counts) == {"train"} and len(res.failures) == len(val_names)


def test_missing_array_is_damage(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert describe_store(good).problems == []
    shutil.rmtree(good / "val" / "B")
    info = describe_store(good)
    assert info.damaged and info.complete
    assert info.problems[0].startswith("array val/B listed in the manifest is missing")
    with pytest.raises(DataError, match="damaged store: array val/B listed in its manifest"):
        open_store(good)
    with pytest.raises(DataError, match="damaged store"):
        recompute_store_stats(good)
    assert main(["data", "info", str(good)]) == 1
    captured = capsys.readouterr()
    assert "DAMAGED" in captured.out and "damaged store: array val/B" in captured.err


def test_missing_chunk_is_damage_but_an_all_zero_tile_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _folder(tmp_path / "z", n=4, black=0)
    out = tmp_path / "z.zarr"
    ingest(tmp_path / "z", out, IngestOptions(tile=TILE, val_fraction=0))
    store = open_store(out)
    arr = store.array("train", "A")
    assert not np.asarray(arr[0]).any()  # the black pair's tiles come first
    info = describe_store(out)
    a = next(x for x in info.arrays if x.key == "train/A")
    assert (a.chunks_expected, a.chunks_present, a.chunks_empty) == (24, 18, 6)
    assert info.problems == [] and main(["data", "info", str(out)]) == 0
    stats_before = open_store(out).stats
    (out / "train" / "A" / "c" / "10" / "0" / "0" / "0").unlink()
    info = describe_store(out)
    a = next(x for x in info.arrays if x.key == "train/A")
    assert (a.chunks_present, a.chunks_missing, a.missing_keys) == (17, 1, ("c/10/0/0/0",))
    assert "train/A: 1 of 24 chunk file(s) missing (c/10/0/0/0)" in info.problems[0]
    capsys.readouterr()
    assert main(["data", "stats", str(out)]) == 1
    assert "damaged store" in capsys.readouterr().err
    assert open_store(out).stats == stats_before  # not rewritten


def test_missing_volume_chunk_is_damage(tmp_path: Path) -> None:
    vol = np.random.default_rng(3).integers(1, 255, (8, 32, 32, 3), dtype=np.uint8)
    vol[:4, :16] = 0  # one all-zero chunk of 4x16x32: zarr writes no file for them
    tifffile.imwrite(tmp_path / "v.tif", vol, photometric="rgb")
    out = tmp_path / "v.zarr"
    ingest(tmp_path / "v.tif", out, IngestOptions(layout="volume", chunks=(4, 16, 32)))
    info = describe_store(out)
    a = next(x for x in info.arrays if x.key == "volumes/v/A")
    assert (a.chunks_expected, a.chunks_present, a.chunks_empty) == (4, 3, 1)
    assert info.problems == []
    files = sorted(p for p in (out / "volumes" / "v" / "A" / "c").rglob("*") if p.is_file())
    files[-1].unlink()
    info = describe_store(out)
    assert info.problems == [
        "array volumes/v/A: 1 of 4 chunk file(s) missing; their data would read as zeros"
    ]


def test_missing_chunk_of_the_demo_volume_is_damage(tmp_path: Path) -> None:
    from stainbench.data.demo import make_demo_store

    demo = make_demo_store(tmp_path / "demo", tile=32, n_train=4, n_val=4)
    assert describe_store(demo.volume).problems == []
    key = "volumes/ihc_stack/B"
    files = sorted(p for p in (demo.volume / key / "c").rglob("*") if p.is_file())
    files[len(files) // 2].unlink()
    problems = describe_store(demo.volume).problems
    assert len(problems) == 1 and problems[0].startswith(f"array {key}: 1 of ")


def test_ingest_into_the_current_directory_and_an_empty_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # '--out .' (an empty working folder) and an empty folder (e.g. a mount point, which
    # cannot be renamed): the store is written into the folder itself
    _folder(tmp_path / "src")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["data", "ingest", str(tmp_path / "src"), "--out", ".", "--tile", "16"]) == 0
    assert open_store(work).kind == "paired"
    assert not _siblings(work)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # a failure into an empty folder leaves it empty (and in place)
    empty = tmp_path / "mnt"
    empty.mkdir()
    with pytest.raises(DataError):
        ingest(tmp_path / "src", empty, IngestOptions(tile=1000))
    assert empty.is_dir() and not any(empty.iterdir())


def test_force_through_a_symlink_replaces_the_store_it_points_to(
    tmp_path: Path, good: Path
) -> None:
    link = tmp_path / "link.zarr"
    link.symlink_to(good)
    _folder(tmp_path / "src2", seed=5)
    ingest(tmp_path / "src2", link, IngestOptions(tile=TILE, force=True))
    assert link.is_symlink() and link.resolve() == good.resolve()
    assert open_store(link).manifest_hash == open_store(good).manifest_hash
    assert "src2" in str(open_store(good).manifest["source"])
