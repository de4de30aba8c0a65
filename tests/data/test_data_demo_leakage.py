"""No validation pixel of the demo set is inside any training tile: checked pixel by pixel.

The check does not trust the manifest's regions: it marks every source pixel covered by a
validation tile (from the recorded positions, verified against the tile contents) and asserts
that no training tile's footprint contains one, for the paired and the unpaired store.
"""

from __future__ import annotations

import numpy as np
import pytest

from stainbench.data.demo import load_source, make_demo_store, render_stains, sample_positions
from stainbench.data.store import open_store


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory):
    return make_demo_store(tmp_path_factory.mktemp("leak"), tile=32, n_train=400, n_val=200, seed=3)


def _footprints(positions: list[list[int]], tile: int, shape: tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)``: the pixels covered by tiles at ``positions``."""
    mask = np.zeros(shape, dtype=bool)
    for y, x in positions:
        mask[y : y + tile, x : x + tile] = True
    return mask


def _positions(split: dict, name: str) -> list[list[list[int]]]:
    pos = split["positions"][name]
    return list(pos.values()) if isinstance(pos, dict) else [pos]


@pytest.mark.parametrize("kind", ["paired", "unpaired"])
def test_no_val_pixel_in_any_train_tile(stores, kind: str) -> None:
    path = stores.paired if kind == "paired" else stores.unpaired
    store = open_store(path)
    split = store.manifest["split"]
    source = load_source()
    h_only = render_stains(source, h_only=True)
    tile = 32
    # the recorded positions are where the tiles really come from
    for name in ("train", "val"):
        for domain, image in (("A", h_only), ("B", source)):
            pos = split["positions"][name]
            pos = pos[domain] if isinstance(pos, dict) else pos
            tiles = store.array(name, domain)[...]
            assert len(tiles) == len(pos)
            for i in range(0, len(pos), 37):
                y, x = pos[i]
                np.testing.assert_array_equal(tiles[i], image[y : y + tile, x : x + tile])
    val_mask = np.zeros(source.shape[:2], dtype=bool)
    for pos in _positions(split, "val"):
        val_mask |= _footprints(pos, tile, source.shape[:2])
    train_mask = np.zeros(source.shape[:2], dtype=bool)
    for pos in _positions(split, "train"):
        train_mask |= _footprints(pos, tile, source.shape[:2])
    assert val_mask.any() and train_mask.any()
    assert not (train_mask & val_mask).any()
    # the guard: no training pixel within 8 columns of a validation pixel
    cols_val = np.flatnonzero(val_mask.any(axis=0))
    cols_train = np.flatnonzero(train_mask.any(axis=0))
    gap = np.abs(cols_val[:, None] - cols_train[None, :]).min()
    assert gap >= 9  # 8 guard columns in between
    # both splits cover the top and the bottom of the field (same tissue mix, not bands)
    for mask in (train_mask, val_mask):
        rows = np.flatnonzero(mask.any(axis=1))
        assert rows.min() < 64 and rows.max() > 448


def test_positions_stay_inside_their_regions() -> None:
    rng = np.random.default_rng(0)
    region_list = [[0, 512, 0, 47], [0, 512, 106, 150]]
    pos = sample_positions(rng, region_list, 32, 2000)
    inside = [
        any(y0 <= y and y + 32 <= y1 and x0 <= x and x + 32 <= x1 for y0, y1, x0, x1 in region_list)
        for y, x in pos
    ]
    assert all(inside)
    # both regions are used, in proportion to their number of positions (16 : 13 columns)
    left = float(np.mean(pos[:, 1] < 47))
    assert 0.5 < left < 0.61
    # every position of a region can be drawn: the extreme corners appear
    assert pos[:, 0].min() == 0 and pos[:, 0].max() == 480
    assert pos[:, 1].min() == 0 and pos[:, 1].max() == 150 - 32
