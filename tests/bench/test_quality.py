"""Bootstrap intervals and per-model quality on synthetic inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from stainbench.bench.quality import (
    IDENTITY,
    PSNR_CAP,
    QualityAccumulator,
    bootstrap_mean,
    bootstrap_relative_difference,
)
from stainbench.errors import BenchmarkError
from stainbench.metrics import METRICS, metric_settings


def test_bootstrap_constant_values_give_a_point() -> None:
    iv = bootstrap_mean([3.0] * 20, rng=np.random.default_rng(0))
    assert (iv.value, iv.low, iv.high, iv.n) == (3.0, 3.0, 3.0, 20)


def test_bootstrap_matches_normal_theory_and_is_seeded() -> None:
    rng = np.random.default_rng(123)
    x = rng.normal(10.0, 2.0, 400)
    iv = bootstrap_mean(x, n_boot=4000, rng=np.random.default_rng(7))
    half = 1.96 * x.std() / np.sqrt(x.size)  # ~0.196
    assert iv.value == pytest.approx(x.mean())
    assert iv.low == pytest.approx(x.mean() - half, abs=0.03)
    assert iv.high == pytest.approx(x.mean() + half, abs=0.03)
    again = bootstrap_mean(x, n_boot=4000, rng=np.random.default_rng(7))
    assert again == iv


def test_bootstrap_coverage_is_near_nominal() -> None:
    # 300 experiments of 60 draws from N(0, 1): the 95 % interval covers 0 about 95 % of times
    data_rng = np.random.default_rng(2024)
    covered = 0
    for i in range(300):
        x = data_rng.normal(0.0, 1.0, 60)
        iv = bootstrap_mean(x, n_boot=1000, rng=np.random.default_rng(i))
        covered += iv.low <= 0.0 <= iv.high
    assert 0.89 <= covered / 300 <= 0.99


def test_bootstrap_drops_nan() -> None:
    iv = bootstrap_mean([1.0, np.nan, 3.0], rng=np.random.default_rng(0))
    assert iv.n == 2 and iv.value == 2.0
    empty = bootstrap_mean([np.nan], rng=np.random.default_rng(0))
    assert empty.n == 0 and np.isnan(empty.value)


def test_relative_difference_known_answer() -> None:
    base = np.random.default_rng(1).uniform(0.4, 0.8, 50)
    # exactly 15 % better on every tile: ratio of means is 1.15 in every resample
    iv = bootstrap_relative_difference(base * 1.15, base, rng=np.random.default_rng(0))
    assert iv.value == pytest.approx(0.15)
    assert iv.low == pytest.approx(0.15) and iv.high == pytest.approx(0.15)
    assert iv.excludes(0.0)


def test_paired_interval_is_narrower_than_unpaired() -> None:
    # tile difficulty varies a lot, the model is 5 % better plus small noise: the paired
    # interval excludes 0 even though the two means' own intervals overlap
    rng = np.random.default_rng(5)
    difficulty = rng.uniform(0.2, 0.9, 40)
    base = difficulty
    model = difficulty * 1.05 + rng.normal(0, 0.005, 40)
    rel = bootstrap_relative_difference(model, base, rng=np.random.default_rng(0))
    m = bootstrap_mean(model, rng=np.random.default_rng(1))
    b = bootstrap_mean(base, rng=np.random.default_rng(2))
    assert m.low < b.high  # unpaired intervals overlap
    assert rel.low > 0.0  # paired: a real improvement
    assert rel.value == pytest.approx(0.05, abs=0.01)


def test_relative_difference_shape_mismatch() -> None:
    with pytest.raises(BenchmarkError, match=r"\(3,\) vs \(2,\)"):
        bootstrap_relative_difference([1, 2, 3], [1, 2], rng=np.random.default_rng(0))


def _tiles(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = rng.integers(30, 200, (n, 32, 32, 3), dtype=np.uint8)
    inputs = np.clip(target.astype(int) + 40, 0, 255).astype(np.uint8)
    return inputs, target


def test_accumulator_summary_and_rows() -> None:
    inputs, target = _tiles(6, seed=0)
    acc = QualityAccumulator(metric_settings(np.uint8))
    acc.add_identity(range(6), inputs, target)
    # the perfect model, added in two batches in reverse order
    acc.add("perfect", [3, 4, 5], target[3:], target[3:])
    acc.add("perfect", [0, 1, 2], target[:3], target[:3])
    # a model whose output is off by exactly 4 grey levels everywhere -> MAE 4
    acc.add("off4", range(6), np.clip(target.astype(int) + 4, 0, 255).astype(np.uint8), target)
    res = acc.summarize(baseline=IDENTITY, n_boot=500, seed=3)
    assert res.models == [IDENTITY, "perfect", "off4"]
    assert res.summary["perfect"].mean["ssim"].value == pytest.approx(1.0)
    assert res.summary["perfect"].mean["psnr"].value == PSNR_CAP  # inf capped for averaging
    assert res.summary["perfect"].mean["mae"].value == 0.0
    assert res.summary["off4"].mean["mae"].value == pytest.approx(4.0)
    assert res.summary[IDENTITY].mean["mae"].value == pytest.approx(40.0)
    # MAE of "off4" vs identity: (4 - 40) / 40 = -0.9 on every tile
    rel = res.summary["off4"].vs_baseline["mae"]
    assert rel.value == pytest.approx(-0.9)
    assert rel.low == pytest.approx(-0.9) and rel.high == pytest.approx(-0.9)
    assert res.summary[IDENTITY].vs_baseline == {}
    rows = acc.rows()
    assert len(rows) == 18
    assert set(rows[0]) == {"model", "tile", *METRICS}
    # deterministic for a seed, independent of the other models present
    again = acc.summarize(baseline=IDENTITY, n_boot=500, seed=3)
    assert again.summary["off4"].mean["ssim"] == res.summary["off4"].mean["ssim"]
    d = res.to_dict()
    assert d["bootstrap"]["seed"] == 3 and d["metric_settings"]["ssim_window"] == 11


def test_accumulator_bad_input() -> None:
    inputs, target = _tiles(2, seed=1)
    acc = QualityAccumulator(metric_settings(np.uint8))
    acc.add("m", [0, 1], inputs, target)
    with pytest.raises(BenchmarkError, match="tile 1 was added twice"):
        acc.add("m", [1], inputs[1:], target[1:])
    with pytest.raises(BenchmarkError, match="got 1 tile ids"):
        acc.add("m2", [0], inputs, target)
    with pytest.raises(BenchmarkError, match="baseline model 'unet' has no results"):
        acc.summarize(baseline="unet")
