"""The demo data set: real IHC source, hematoxylin-only input, disjoint train/val regions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stainbench.cli.main import main
from stainbench.data.datasets import (
    PairedPatchDataset,
    UnpairedPatchDataset,
    VolumePatchDataset,
)
from stainbench.data.demo import (
    guard_width,
    load_source,
    make_demo_store,
    regions,
    render_stains,
)
from stainbench.data.store import open_store
from stainbench.errors import DataError


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return make_demo_store(tmp_path_factory.mktemp("demo"), tile=32, n_train=8, n_val=4, seed=0)


def _overlap(r1: list[int], r2: list[int]) -> bool:
    return r1[0] < r2[1] and r2[0] < r1[1] and r1[2] < r2[3] and r2[2] < r1[3]


def test_paired_tiles_are_the_source_at_recorded_positions(demo) -> None:
    store = open_store(demo.paired)
    assert store.kind == "paired"
    source = load_source()
    h_only = render_stains(source, h_only=True)
    positions = store.manifest["split"]["positions"]
    for split, n in (("train", 8), ("val", 4)):
        a, b = store.array(split, "A")[...], store.array(split, "B")[...]
        assert a.shape == b.shape == (n, 32, 32, 3) and a.dtype == np.uint8
        for i, (y, x) in enumerate(positions[split]):
            np.testing.assert_array_equal(b[i], source[y : y + 32, x : x + 32])
            np.testing.assert_array_equal(a[i], h_only[y : y + 32, x : x + 32])
    # the hematoxylin-only input really lacks the brown DAB: less red-vs-blue contrast
    assert h_only[..., 2].mean() > source[..., 2].mean() + 20


def test_manifest_describes_the_stripes(demo) -> None:
    for path in (demo.paired, demo.unpaired):
        split = open_store(path).manifest["split"]
        assert split["method"] == "region" and split["layout"] == "vertical_stripes"
        assert split["stripes"] == 10 and split["guard_px"] == 8
        reg = split["regions"]
        assert len(reg["train"]) == 5 and len(reg["val"]) == 5
        assert reg == {k: [list(r) for r in v] for k, v in regions(32).items()}
        # every region spans the full height; train and val alternate left to right
        bands = sorted((r[2], name) for name in reg for r in reg[name])
        assert [name for _, name in bands] == ["train", "val"] * 5
        assert all(r[0] == 0 and r[1] == 512 for name in reg for r in reg[name])
        for t in reg["train"]:
            for v in reg["val"]:
                assert not _overlap(t, v)
                assert max(v[2] - t[3], t[2] - v[3]) >= 8  # the guard between them


@pytest.mark.parametrize("tile", [16, 32, 64, 100, 128, 200, 248, 252, 256])
def test_regions_hold_tiles_and_keep_the_guard(tile: int) -> None:
    r = regions(tile)
    assert len(r["train"]) >= 1 and len(r["val"]) >= 1
    for y0, y1, x0, x1 in r["train"] + r["val"]:
        assert y1 - y0 >= tile and x1 - x0 >= tile
        if tile <= 128:
            assert x1 - x0 >= tile + tile // 8  # room for many positions
    for t in r["train"]:
        for v in r["val"]:
            assert not _overlap(t, v)
    # together with the guards the stripes cover the whole width
    widths = sum(x1 - x0 for _, _, x0, x1 in r["train"] + r["val"])
    gaps = len(r["train"]) + len(r["val"]) - 1
    assert widths + gaps * guard_width(tile) == 512
    assert guard_width(tile) == (8 if tile <= 248 else 0)


def test_unpaired_and_volume_variants(demo) -> None:
    un = open_store(demo.unpaired)
    assert un.kind == "unpaired"
    assert un.array("train", "A").shape[0] == 8 and un.array("train", "B").shape[0] == 7
    ds = UnpairedPatchDataset(demo.unpaired, "train", 32)
    assert len(ds) == 8 and ds[0]["B"].shape == (3, 32, 32)
    vol = open_store(demo.volume)
    assert vol.kind == "volume"
    train, val = vol.volumes("train"), vol.volumes("val")
    assert train[0].z == (0, 24) and val[0].z == (24, 32)
    arr = vol.volume_array("ihc_stack", "B")
    assert arr.shape == (32, 256, 256, 3)
    source = load_source()
    for z in (0, 13, 31):  # slice z: window at (8z, 8z), optical density x (0.75 + 0.5 z/31)
        window = source[8 * z : 8 * z + 256, 8 * z : 8 * z + 256]
        expected = render_stains(window, h_only=False, factor=0.75 + 0.5 * z / 31)
        np.testing.assert_array_equal(arr[z], expected)
    assert "per_volume" in vol.stats
    stack = VolumePatchDataset(demo.volume, "train", 64, mode="2.5d", depth=3, samples_per_epoch=2)
    assert stack[0]["A"].shape == (9, 64, 64) and stack[0]["B"].shape == (3, 64, 64)


def test_datasets_work_on_the_demo_store(demo) -> None:
    ds = PairedPatchDataset(demo.paired, "train", 24, normalization="zscore")
    item = ds[0]
    assert item["A"].shape == item["B"].shape == (3, 24, 24)
    assert ds.manifest_hash == open_store(demo.paired).manifest_hash


def test_bad_demo_arguments(tmp_path: Path, demo) -> None:
    with pytest.raises(DataError, match="--tile 300"):
        make_demo_store(tmp_path, tile=300)
    with pytest.raises(DataError, match="already exists; pass --force"):
        make_demo_store(demo.out, tile=32, n_train=2, n_val=1)


def test_cli_demo_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["data", "demo", str(out), "--tile", "32", "--train", "6", "--val", "3"]) == 0
    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("paired.zarr", "unpaired.zarr", "volume.zarr", "train/A", "complete"):
        assert name in text
    assert main(["data", "demo", str(out), "--tile", "32", "--train", "6", "--val", "3"]) == 1
    assert "pass --force" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path / "nothing")]) == 1
