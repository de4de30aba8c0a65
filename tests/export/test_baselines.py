"""Classical baselines: our CIELAB, Reinhard and Macenko against their known properties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2lab

from stainbench.baselines.lab import lab_to_rgb, rgb_to_lab
from stainbench.baselines.macenko import (
    concentrations,
    estimate_stains,
    fit_macenko,
    macenko_transfer,
    optical_density,
)
from stainbench.baselines.reinhard import (
    ReinhardModule,
    ReinhardTarget,
    fit_reinhard,
    reinhard_transfer,
)
from stainbench.errors import DataError
from stainbench.export.onnx import OnnxTileModel, export_onnx
from stainbench.export.parity import run_parity_gate
from stainbench.export.profile import ParitySettings


@pytest.fixture(scope="module")
def he(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Two real H&E fields of different stain appearance, as 2x2 grids of 128x128 tiles."""

    def tiles(name: str) -> np.ndarray:
        rgb = np.asarray(Image.open(shared_data / "torchstain-he" / name).convert("RGB"))
        return np.stack([rgb[y : y + 128, x : x + 128] for y in (0, 200) for x in (0, 300)])

    return tiles("source.png"), tiles("target.png")


def test_lab_matches_skimage_and_inverts(he: tuple[np.ndarray, np.ndarray]) -> None:
    src = he[0]
    rng = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for img in (src, rng):
        assert np.abs(rgb_to_lab(img) - rgb2lab(img)).max() < 1e-6
        assert np.abs(lab_to_rgb(rgb_to_lab(img)) * 255 - img).max() < 1e-6


def test_reinhard_output_has_target_lab_statistics(he: tuple[np.ndarray, np.ndarray]) -> None:
    src, tgt = he
    target = fit_reinhard(tgt)
    out = reinhard_transfer(src, target)
    assert out.dtype == np.uint8 and out.shape == src.shape
    for tile in out:
        lab = rgb_to_lab(tile).reshape(-1, 3)
        assert np.allclose(lab.mean(0), target.mean, atol=0.5)
        assert np.allclose(lab.std(0), target.std, rtol=0.03)
    # before the transfer the source is clearly elsewhere in LAB
    assert np.abs(rgb_to_lab(src).reshape(-1, 3).mean(0) - target.mean).max() > 2


def test_reinhard_to_own_statistics_is_identity(he: tuple[np.ndarray, np.ndarray]) -> None:
    tile = he[0][:1]
    lab = rgb_to_lab(tile).reshape(-1, 3)
    own = ReinhardTarget(tuple(lab.mean(0)), tuple(lab.std(0)))
    assert np.abs(reinhard_transfer(tile, own).astype(int) - tile).max() <= 1


def test_reinhard_graph_matches_numpy_and_exports(
    he: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    src, tgt = he
    module = ReinhardModule(fit_reinhard(tgt))
    y8, _ = module.translate(src)
    assert np.abs(y8.astype(int) - reinhard_transfer(src, fit_reinhard(tgt))).max() <= 1
    files = export_onnx(module, tmp_path)
    report = run_parity_gate(module, OnnxTileModel(files.parity), src, ParitySettings())
    assert report.passed and report.tile == 128 and report.val_tiles == 4


def test_reinhard_rejects_bad_tiles() -> None:
    with pytest.raises(DataError, match="uint8"):
        fit_reinhard(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(DataError, match=r"\(N, H, W, 3\)"):
        reinhard_transfer(np.zeros((4, 4, 3), np.uint8), ReinhardTarget((50, 0, 0), (1, 1, 1)))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(0) / np.linalg.norm(a, axis=0) / np.linalg.norm(b, axis=0)


def test_macenko_output_has_target_stains(he: tuple[np.ndarray, np.ndarray]) -> None:
    src, tgt = he
    target = fit_macenko(tgt)
    stains_t = np.asarray(target.stain_matrix)
    assert stains_t.shape == (3, 2) and stains_t[0, 0] > stains_t[0, 1]  # H column first
    out = macenko_transfer(src, target)
    assert out.dtype == np.uint8 and out.shape == src.shape
    od_src = optical_density(src.reshape(-1, 3), target.io)
    od_out = optical_density(out.reshape(-1, 3), target.io)
    before = estimate_stains(od_src, target.alpha, target.beta)
    after = estimate_stains(od_out, target.alpha, target.beta)
    assert before is not None and after is not None
    # the output's stain vectors moved to the target's
    assert (_cos(after, stains_t) > 0.99).all()
    assert _cos(after, stains_t).min() > _cos(before, stains_t).min()
    for tile in out:  # each tile's 99th-percentile concentrations (target stains) match
        od = optical_density(tile.reshape(-1, 3), target.io)
        c99 = np.percentile(concentrations(od, stains_t), 99, axis=0)
        assert np.allclose(c99, target.max_conc, rtol=0.12)


def test_macenko_is_per_tile_and_leaves_blank_tiles(he: tuple[np.ndarray, np.ndarray]) -> None:
    src, tgt = he
    target = fit_macenko(tgt)
    batch = macenko_transfer(src, target)
    assert np.array_equal(batch[1:2], macenko_transfer(src[1:2], target))
    blank = np.full((1, 32, 32, 3), 250, np.uint8)
    assert np.array_equal(macenko_transfer(blank, target), blank)
    with pytest.raises(ValueError, match="too little tissue"):
        fit_macenko(blank)
