"""The store: creation, completion flag, schema checks, refusal to overwrite, statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stainbench.data.stats import FIELDS, PERCENTILES
from stainbench.data.store import create_store, manifest_hash, open_store
from stainbench.data.writer import write_tile_store
from stainbench.errors import DataError


def _numpy_stats(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    cols = [flat.mean(0), flat.std(0), flat.min(0), flat.max(0)]
    cols += [np.percentile(flat, q, axis=0) for q in PERCENTILES]
    return np.stack(cols, axis=1)


@pytest.fixture()
def tiles() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return {
        "train": {
            "A": rng.integers(0, 256, (70, 20, 24, 3), dtype=np.uint8),
            "B": rng.integers(100, 3000, (70, 20, 24, 1), dtype=np.uint16),
        },
        "val": {
            "A": rng.integers(0, 200, (5, 20, 24, 3), dtype=np.uint8),
            "B": rng.integers(0, 65535, (5, 20, 24, 1), dtype=np.uint16),
        },
    }


def test_written_store_reads_back_with_exact_stats(tmp_path: Path, tiles) -> None:
    digest = write_tile_store(tmp_path / "s.zarr", "paired", tiles, {"note": "test"})
    store = open_store(tmp_path / "s.zarr")
    assert store.kind == "paired"
    assert store.splits == ["train", "val"]
    assert store.domains("train") == ["A", "B"]
    assert store.manifest_hash == digest == manifest_hash({"note": "test"})
    for split, domains in tiles.items():
        for domain, values in domains.items():
            np.testing.assert_array_equal(store.array(split, domain)[...], values)
            ds = store.stats["splits"][split][domain]
            got = np.stack([ds[f] for f in FIELDS], axis=1)
            np.testing.assert_allclose(got, _numpy_stats(values), rtol=1e-12, atol=1e-9)
            per = store.per_image_stats(split, domain)
            assert per is not None and per.shape == (len(values), values.shape[-1], len(FIELDS))
            for i in (0, len(values) - 1):
                np.testing.assert_allclose(per[i], _numpy_stats(values[i]), rtol=1e-12, atol=1e-9)
    assert store.stats["splits"]["train"]["B"]["value_range"] == [0, 65535]


def test_incomplete_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "half.zarr"
    create_store(path, "paired")
    with pytest.raises(DataError, match="incomplete store"):
        open_store(path)


def test_other_schema_version_is_refused(tmp_path: Path, tiles) -> None:
    path = tmp_path / "s.zarr"
    write_tile_store(path, "paired", tiles, {})
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["stainbench"]["schema_version"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="schema version 99"):
        open_store(path)


@pytest.mark.parametrize("what", ["missing", "plain_dir", "foreign_zarr"])
def test_not_a_store(tmp_path: Path, what: str) -> None:
    path = tmp_path / "x"
    if what == "plain_dir":
        path.mkdir()
        (path / "a.txt").write_text("hi")
    elif what == "foreign_zarr":
        import zarr

        zarr.open_group(str(path), mode="w")
    with pytest.raises(DataError, match=str(path)) as info:
        open_store(path)
    assert "\n" not in str(info.value)


def test_existing_store_needs_force_and_foreign_dirs_are_never_deleted(
    tmp_path: Path, tiles
) -> None:
    path = tmp_path / "s.zarr"
    write_tile_store(path, "paired", tiles, {"v": 1})
    with pytest.raises(DataError, match="already holds a stainbench store; pass --force"):
        create_store(path, "paired")
    write_tile_store(path, "paired", tiles, {"v": 2}, force=True)
    assert open_store(path).manifest == {"v": 2}
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="not a zarr store; refusing"):
        create_store(other, "paired", force=True)
    assert (other / "holiday.jpg").exists()


def test_unknown_split_and_domain(tmp_path: Path, tiles) -> None:
    write_tile_store(tmp_path / "s.zarr", "paired", tiles, {})
    store = open_store(tmp_path / "s.zarr")
    with pytest.raises(DataError, match="no split 'test'"):
        store.array("test", "A")
    with pytest.raises(DataError, match="no domain 'C'"):
        store.array("train", "C")
