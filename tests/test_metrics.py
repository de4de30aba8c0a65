"""Metrics against known answers and against scikit-image on the same settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage import data
from skimage.color import hed2rgb
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from stainbench import metrics
from stainbench.errors import DataError


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    """Four 64x64 uint8 RGB crops of skimage's immunohistochemistry image, (4, 64, 64, 3)."""
    image = data.immunohistochemistry()
    return np.stack(
        [image[y : y + 64, x : x + 64] for y, x in [(0, 0), (100, 200), (300, 50), (400, 400)]]
    )


def _noisy(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(x.astype(np.float64) + rng.normal(0, sigma, x.shape), 0, 255).astype(np.uint8)


def test_identical_images(ihc: np.ndarray) -> None:
    x = ihc[0]
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    assert metrics.psnr(x, x) == math.inf
    assert metrics.mae(x, x) == 0.0
    assert metrics.histogram_kl(x, x) == pytest.approx(0.0, abs=1e-12)
    s = metrics.stain_scores(x, x)
    assert s["pearson"] == pytest.approx(1.0)
    assert s["dice"] == 1.0


def test_ssim_agrees_with_skimage_uint8_and_float(ihc: np.ndarray) -> None:
    pred = _noisy(ihc, 20, seed=1)
    got = metrics.ssim(pred, ihc)
    assert got.shape == (4,)
    for i in range(4):
        ref = structural_similarity(
            pred[i],
            ihc[i],
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=-1,
        )
        assert got[i] == pytest.approx(ref, rel=1e-12)
    # floats in [0, 1] with data_range 1 give the same numbers
    got_f = metrics.ssim(pred / 255.0, ihc / 255.0, data_range=1.0)
    np.testing.assert_allclose(got_f, got, rtol=1e-10)
    assert 0.0 < got.min() < got.max() < 1.0
    assert metrics.SSIM_WINDOW == 11


def test_psnr_and_mae_known_values() -> None:
    target = np.zeros((2, 16, 16, 3), np.uint8)
    pred = target.copy()
    pred[0] += 10  # every pixel off by 10 -> MSE 100, MAE 10
    pred[1, :8] = 255  # half the pixels off by 255 -> MSE 255^2 / 2
    np.testing.assert_allclose(metrics.mae(pred, target), [10.0, 127.5])
    np.testing.assert_allclose(
        metrics.psnr(pred, target), [10 * np.log10(255**2 / 100), 10 * np.log10(2.0)]
    )
    assert metrics.psnr(pred[0], target[0]) == pytest.approx(
        peak_signal_noise_ratio(target[0], pred[0], data_range=255)
    )
    # uint8 subtraction must not wrap around
    assert metrics.mae(target[0], pred[0]) == 10.0


def test_histogram_kl_known_value() -> None:
    # target all 0, prediction all 255, one channel, 2 bins, pseudo-count 1, 4 pixels:
    # q_t = (5/6, 1/6), q_p = (1/6, 5/6) -> KL = 5/6 ln 5 + 1/6 ln(1/5) = 2/3 ln 5
    target = np.zeros((2, 2, 1), np.uint8)
    pred = np.full((2, 2, 1), 255, np.uint8)
    kl = metrics.histogram_kl(pred, target, bins=2, pseudo_count=1.0)
    assert kl == pytest.approx(2 / 3 * math.log(5))
    # asymmetric in general, symmetric here by construction; colour shift increases it
    rng = np.random.default_rng(0)
    x = rng.integers(0, 200, (32, 32, 3), dtype=np.uint8)
    assert metrics.histogram_kl(x + 50, x) > metrics.histogram_kl(x + 5, x) > 0


def test_dice_and_pearson_known_masks() -> None:
    a = np.zeros((3, 10), bool)
    b = np.zeros((3, 10), bool)
    a[0, :4] = True
    b[0, 2:6] = True  # overlap 2 of 4 + 4 -> 0.5
    a[1, :5] = True  # b empty -> 0
    # row 2: both empty -> 1 by convention
    np.testing.assert_allclose(metrics.dice(a, b), [0.5, 0.0, 1.0])
    x = np.array([[1.0, 2, 3, 4], [1, 1, 1, 1]])
    y = np.array([[2.0, 4, 6, 8], [1, 2, 3, 4]])
    r = metrics.pearson(x, y)
    assert r[0] == pytest.approx(1.0)
    assert np.isnan(r[1])


def test_stain_scores_on_synthetic_dab() -> None:
    # a pure DAB image from a known density map: the left half stained, the right half clear
    hed = np.zeros((1, 32, 32, 3))
    hed[0, :, :16, 2] = 0.2
    target = (hed2rgb(hed[0])[None] * 255).round().astype(np.uint8)
    od = metrics.stain_density(target)
    assert od.shape == (1, 32, 32)
    assert od[0, :, :16].min() > 0.15 and od[0, :, 16:].max() < 0.01
    # prediction stains only the top half of the left half -> Dice 2*256/(512+256) = 2/3
    pred_hed = hed.copy()
    pred_hed[0, 16:, :16, 2] = 0.0
    pred = (hed2rgb(pred_hed[0])[None] * 255).round().astype(np.uint8)
    s = metrics.stain_scores(pred, target)
    assert s["dice"][0] == pytest.approx(2 / 3)
    assert 0.3 < s["pearson"][0] < 0.9
    # the eosin channel of a pure DAB image is empty in both: Dice 1, Pearson undefined
    e = metrics.stain_scores(pred, target, stain="eosin", threshold=0.05)
    assert e["dice"][0] == 1.0


def test_all_metrics_batch(ihc: np.ndarray) -> None:
    pred = _noisy(ihc, 10, seed=2)
    settings = metrics.metric_settings(np.uint8)
    out = metrics.all_metrics(pred, ihc, settings)
    assert list(out) == list(metrics.METRICS)
    for name, values in out.items():
        assert values.shape == (4,), name
        assert np.all(np.isfinite(values)), name
    assert settings.to_dict()["ssim_window"] == 11
    assert settings.to_dict()["data_range"] == 255.0


@pytest.mark.parametrize(
    ("pred_shape", "target_shape"),
    [((4, 16, 16, 3), (4, 16, 8, 3)), ((16, 16, 3), (1, 16, 16, 3))],
)
def test_shape_mismatch_names_both_shapes(pred_shape: tuple, target_shape: tuple) -> None:
    pred = np.zeros(pred_shape, np.uint8)
    target = np.zeros(target_shape, np.uint8)
    for fn in (metrics.ssim, metrics.psnr, metrics.mae, metrics.histogram_kl, metrics.stain_scores):
        with pytest.raises(DataError) as info:
            fn(pred, target)
        assert str(pred_shape) in str(info.value) and str(target_shape) in str(info.value)


def test_bad_inputs() -> None:
    x = np.zeros((16, 16, 3), np.float32)
    with pytest.raises(DataError, match="data_range must be given"):
        metrics.psnr(x, x)
    with pytest.raises(DataError, match="at least 11x11"):
        metrics.ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="RGB"):
        metrics.stain_scores(np.zeros((16, 16, 1), np.uint8), np.zeros((16, 16, 1), np.uint8))
    with pytest.raises(DataError, match="unknown stain"):
        metrics.metric_settings(np.uint8, stain="silver")  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"\(16, 16\)"):
        metrics.mae(np.zeros((16, 16)), np.zeros((16, 16)))
