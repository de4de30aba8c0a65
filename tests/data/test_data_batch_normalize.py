"""Raw items + per-batch normalization give exactly the numbers per-item normalization gave.

The reference is the per-item path the datasets used before they returned raw patches:
``Normalization.forward`` (numpy float32) on each item's raw ``(C, ...)`` patch, with the
dataset's normalization (per tile in the percentile mode, per volume for volumes). The batch
path is ``DataLoader`` collation + ``normalize_batch``. They must agree bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torch.utils.data import DataLoader

from stainbench.data.datasets import PairedPatchDataset, UnpairedPatchDataset, VolumePatchDataset
from stainbench.data.ingest import IngestOptions, ingest
from stainbench.data.store import open_store
from stainbench.data.transforms import MODES, Normalization, normalize_batch, normalize_raw
from stainbench.data.writer import write_tile_store
from stainbench.errors import DataError


def _bits_equal(got: torch.Tensor, expected: np.ndarray) -> None:
    assert got.dtype == torch.float32 and expected.dtype == np.float32
    assert tuple(got.shape) == expected.shape
    np.testing.assert_array_equal(got.numpy().view(np.uint32), expected.view(np.uint32))


def _tile_norm(
    path: Path, mode: str, domain: str, tile: int, split: str = "train"
) -> Normalization:
    """The per-item normalization, derived from the store independently of the dataset."""
    store = open_store(path)
    if mode == "range":
        hi = float(np.iinfo(store.array(split, domain).dtype).max)
        return Normalization("range", domain, (hi / 2,) * 3, (hi / 2,) * 3)
    norm = Normalization.from_stats(store.stats, mode, domain)
    if mode == "percentile":
        norm = norm.for_image(store.per_image_stats(split, domain)[tile])
    return norm


@pytest.fixture(scope="module", params=[np.uint8, np.uint16], ids=["u8", "u16"])
def tiles(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A paired store of smooth-ish random tiles (per-tile percentiles differ per tile)."""
    dtype = request.param
    hi = int(np.iinfo(dtype).max)
    rng = np.random.default_rng(11)
    base = rng.integers(0, hi // 2, (10, 1, 1, 3))
    a = (base + rng.integers(0, hi // 2, (10, 20, 18, 3))).astype(dtype)
    b = (hi - a.astype(np.int64)).astype(dtype)
    path = tmp_path_factory.mktemp("bn") / f"{np.dtype(dtype).name}.zarr"
    write_tile_store(path, "paired", {"train": {"A": a, "B": b}}, {})
    return path


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("workers", [0, 2])
def test_paired_batches_equal_per_item_normalization(tiles: Path, mode: str, workers: int) -> None:
    ds = PairedPatchDataset(tiles, "train", 16, normalization=mode, seed=4)
    ds.set_epoch(2)
    loader = DataLoader(ds, batch_size=4, num_workers=workers)
    seen = 0
    for batch in loader:
        got = normalize_batch(batch)
        assert set(got) == {"A", "B"}
        for j in range(batch["A"].shape[0]):
            i = seen + j
            for d in ("A", "B"):
                raw = ds[i][d].numpy()
                assert raw.dtype == np.dtype(ds.store.array("train", d).dtype)
                expected = _tile_norm(tiles, mode, d, i).forward(raw)
                _bits_equal(got[d][j], expected)
        seen += batch["A"].shape[0]
    assert seen == len(ds) == 10


def test_percentile_items_carry_their_own_tiles_parameters(tiles: Path) -> None:
    ds = PairedPatchDataset(tiles, "train", 16, normalization="percentile", augment=False)
    params = torch.stack([ds[i]["A_norm"] for i in range(len(ds))])
    assert len({tuple(p.flatten().tolist()) for p in params}) == len(ds)  # one per tile
    store = open_store(tiles)
    raw = np.asarray(store.array("train", "A")[3]).astype(np.float64)
    lo, hi = np.percentile(raw[..., 1], [1, 99])
    assert params[3, 0, 1] == np.float32((lo + hi) / 2)
    assert params[3, 1, 1] == np.float32((hi - lo) / 2)


@pytest.mark.parametrize("mode", MODES)
def test_unpaired_batches_equal_per_item_normalization(tiles: Path, mode: str) -> None:
    ds = UnpairedPatchDataset(tiles, "train", 12, normalization=mode, seed=1)
    batch = next(iter(DataLoader(ds, batch_size=len(ds))))
    got = normalize_batch(batch)
    for i in range(len(ds)):
        item = ds[i]
        for d in ("A", "B"):
            norm = ds.normalization[d]
            if mode == "percentile":  # the tile is not known here: use the item's parameters
                off, scale = item[f"{d}_norm"].numpy()
                norm = Normalization(mode, d, tuple(map(float, off)), tuple(map(float, scale)))
            _bits_equal(got[d][i], norm.forward(item[d].numpy()))


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two uint16 volumes of 3 channels with different value ranges (per-volume stats differ)."""
    root = tmp_path_factory.mktemp("bnvol")
    rng = np.random.default_rng(5)
    for d in ("A", "B"):
        (root / "src" / d).mkdir(parents=True)
    for k, name in enumerate(("v0", "v1")):
        vol = rng.integers(100 * (k + 1), 3000 * (k + 1), (6, 20, 20, 3)).astype(np.uint16)
        for d, data in (("A", vol), ("B", vol // 2)):
            tifffile.imwrite(
                root / "src" / d / f"{name}.tif", data, photometric="rgb", planarconfig="contig"
            )
    ingest(root / "src", root / "v.zarr", IngestOptions(layout="volume", chunks=(2, 8, 8)))
    return root / "v.zarr"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("vmode", "depth"), [("2d", 1), ("2.5d", 3), ("3d", 2)])
def test_volume_batches_equal_per_item_normalization(
    volume: Path, mode: str, vmode: str, depth: int
) -> None:
    ds = VolumePatchDataset(
        volume, "train", 8, mode=vmode, depth=depth, normalization=mode, samples_per_epoch=6
    )
    batch = next(iter(DataLoader(ds, batch_size=6)))
    got = normalize_batch(batch)
    stats = open_store(volume).stats
    for i in range(len(ds)):
        span, _, _ = ds.locate(i)
        for d in ("A", "B"):
            norm = Normalization.from_stats(stats, mode, d) if mode != "range" else None
            if mode == "range":
                norm = Normalization("range", d, (32767.5,) * 3, (32767.5,) * 3)
            elif mode == "percentile":
                per = stats["per_volume"][span.name][d]
                norm = Normalization.from_values(mode, d, per)
            raw = ds[i][d].numpy()
            if vmode == "2.5d" and d == "A":  # (D*C, P, P) slice-major: normalize as (D, C, ..)
                expected = norm.forward(raw.reshape(depth, 3, 8, 8)).reshape(raw.shape)
            elif vmode == "3d":
                expected = norm.forward(raw, channel_axis=0)
            else:
                expected = norm.forward(raw)
            _bits_equal(got[d][i], expected)


def test_normalize_raw_checks_shapes_and_keeps_inputs() -> None:
    params = torch.tensor([[[1.0, 2.0], [2.0, 4.0]]])  # (B=1, 2, C=2)
    raw = torch.full((1, 2, 3, 3), 9, dtype=torch.uint8)
    out = normalize_raw(raw, params)
    assert out.dtype == torch.float32 and float(out[0, 0, 0, 0]) == 4.0 and out[0, 1].eq(1.75).all()
    as_float = raw.float()
    normalize_raw(as_float, params)
    assert as_float.eq(9).all()  # a float input is never modified in place
    with pytest.raises(DataError, match=r"do not fit patches \(1, 3, 3, 3\)"):
        normalize_raw(torch.zeros((1, 3, 3, 3), dtype=torch.uint8), params)
    passthrough = normalize_batch({"A": raw, "A_norm": params, "name": torch.tensor([7])})
    assert set(passthrough) == {"A", "name"} and passthrough["name"].item() == 7
