"""Volume ingestion: multi-page TIFF and OME-Zarr, chunking, sharding, split, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from stainbench.data.ingest import IngestOptions, ingest
from stainbench.data.stats import FIELDS, PERCENTILES
from stainbench.data.store import open_store
from stainbench.errors import DataError


def _np_stats(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    cols = [flat.mean(0), flat.std(0), flat.min(0), flat.max(0)]
    cols += [np.percentile(flat, q, axis=0) for q in PERCENTILES]
    return np.stack(cols, 1)


def _ds(ds: dict) -> np.ndarray:
    return np.stack([ds[f] for f in FIELDS], 1)


def test_multipage_tiff_volume_region_split_and_exact_stats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 5000, (20, 40, 36), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "brain.tif", vol)
    res = ingest(
        tmp_path / "brain.tif",
        tmp_path / "v.zarr",
        IngestOptions(layout="volume", chunks=(4, 16, 16), val_fraction=0.25),
    )
    assert res.split_method == "region"
    store = open_store(tmp_path / "v.zarr")
    arr = store.volume_array("brain", "A")
    assert arr.shape == (20, 40, 36, 1) and arr.chunks == (4, 16, 16, 1)
    np.testing.assert_array_equal(arr[...][..., 0], vol)
    assert [r.z for r in store.volumes("train")] == [(0, 15)]
    assert [r.z for r in store.volumes("val")] == [(15, 20)]
    stats = store.stats
    np.testing.assert_allclose(
        _ds(stats["splits"]["train"]["A"]), _np_stats(vol[:15, ..., None]), rtol=1e-12, atol=1e-9
    )
    np.testing.assert_allclose(
        _ds(stats["splits"]["val"]["A"]), _np_stats(vol[15:, ..., None]), rtol=1e-12, atol=1e-9
    )
    np.testing.assert_allclose(
        _ds(stats["per_volume"]["brain"]["A"]), _np_stats(vol[..., None]), rtol=1e-12, atol=1e-9
    )
    assert store.manifest["sources"][0]["format"] == "TIFF"


def test_paired_ome_zarr_volumes_split_by_volume_with_shards(tmp_path: Path) -> None:
    import zarr

    rng = np.random.default_rng(1)
    volumes = {}
    for name in ("v1", "v2", "v3"):
        for d in ("A", "B"):
            (tmp_path / "src" / d).mkdir(parents=True, exist_ok=True)
            czyx = rng.integers(0, 256, (3, 8, 32, 32), dtype=np.uint8)
            g = zarr.open_group(str(tmp_path / "src" / d / f"{name}.ome.zarr"), mode="w")
            g.create_array("0", data=czyx, chunks=(3, 4, 16, 16))
            axes = [{"name": n} for n in "czyx"]
            g.attrs["ome"] = {"multiscales": [{"axes": axes, "datasets": [{"path": "0"}]}]}
            volumes[(name, d)] = np.moveaxis(czyx, 0, -1)
    ingest(
        tmp_path / "src",
        tmp_path / "v.zarr",
        IngestOptions(layout="volume", chunks=(2, 8, 8), shards=(4, 16, 16), val_fraction=0.34),
    )
    store = open_store(tmp_path / "v.zarr")
    train = {r.name for r in store.volumes("train")}
    val = {r.name for r in store.volumes("val")}
    assert len(val) == 1 and len(train) == 2 and not train & val
    arr = store.volume_array("v2", "B")
    assert arr.chunks == (2, 8, 8, 3) and arr.shards == (4, 16, 16, 3)
    np.testing.assert_array_equal(arr[...], volumes[("v2", "B")])
    meta = json.loads((tmp_path / "v.zarr" / "volumes" / "v2" / "B" / "zarr.json").read_text())
    assert "sharding_indexed" in json.dumps(meta["codecs"])


@pytest.mark.parametrize(
    ("chunks", "shards", "match"),
    [
        ((4, 64, 8), None, "chunk shape 4x64x8 is larger than the array 6x16x16"),
        ((2, 8, 8), (3, 8, 8), "multiple of --chunks"),
    ],
)
def test_bad_chunking(tmp_path: Path, chunks, shards, match: str) -> None:
    tifffile.imwrite(tmp_path / "v.tif", np.zeros((6, 16, 16), np.uint8))
    with pytest.raises(DataError, match=match):
        ingest(
            tmp_path / "v.tif",
            tmp_path / "v.zarr",
            IngestOptions(layout="volume", chunks=chunks, shards=shards),
        )
    assert not (tmp_path / "v.zarr").exists()


def test_volume_with_wrong_dimensions(tmp_path: Path) -> None:
    import zarr

    zarr.create_array(str(tmp_path / "x.zarr"), shape=(2, 3, 4, 5, 6), dtype="u1")
    with pytest.raises(DataError, match="unexpected number of dimensions"):
        ingest(tmp_path / "x.zarr", tmp_path / "v.zarr", IngestOptions(layout="volume"))


def test_ome_zarr_v04_in_zarr_v2_format(tmp_path: Path) -> None:
    import zarr

    rng = np.random.default_rng(5)
    tczyx = rng.integers(0, 4096, (1, 1, 6, 16, 20), dtype=np.uint16)
    g = zarr.open_group(str(tmp_path / "old.ome.zarr"), mode="w", zarr_format=2)
    g.create_array("0", data=tczyx, chunks=(1, 1, 3, 8, 8))
    axes = [{"name": n} for n in "tczyx"]
    g.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]}]
    ingest(tmp_path / "old.ome.zarr", tmp_path / "v.zarr", IngestOptions(layout="volume"))
    store = open_store(tmp_path / "v.zarr")
    arr = store.volume_array("old", "A")
    assert arr.shape == (6, 16, 20, 1)
    np.testing.assert_array_equal(arr[...][..., 0], tczyx[0, 0])
    assert store.manifest["sources"][0]["format"] == "OME-Zarr"
