"""Quality of every model on every validation tile: per-tile metrics, bootstrap intervals.

The unit of evidence is a validation tile. For each model we keep every tile's metric values
(:mod:`stainbench.metrics`), then summarize them with

- the **mean** and a seeded **percentile bootstrap** confidence interval (tiles resampled with
  replacement, ``n_boot`` times, the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
  percentiles of the resampled means);
- the **relative difference to a baseline model**, ``(mean_model - mean_base) / |mean_base|``,
  with a **paired** bootstrap interval: each resample draws the same tiles for both models, so
  tile difficulty (shared by the models) cancels out. A claim such as "the GANs beat the UNet
  by 15 % in SSIM" holds when the interval excludes 0 on the better side.

Undefined per-tile values (``nan``, e.g. the stain Pearson correlation of a blank tile) are
left out of the mean; the paired comparison uses tiles where both models are defined. PSNR
of an exactly reproduced tile is ``inf``; for averaging it is capped at :data:`PSNR_CAP` dB.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stainbench.errors import BenchmarkError
from stainbench.metrics import METRICS, MetricSettings, all_metrics

#: PSNR (dB) used for averaging when a tile is reproduced exactly (PSNR = inf).
PSNR_CAP = 100.0
#: Name of the locally computed "model" whose output is its input.
IDENTITY = "identity"


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval over ``n`` tiles."""

    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}

    def excludes(self, x: float = 0.0) -> bool:
        """Whether the interval lies entirely on one side of ``x``."""
        return bool(self.low > x or self.high < x)


@dataclass
class ModelQuality:
    """Summary of one model: metric name -> interval of the mean (and vs the baseline)."""

    model: str
    n_tiles: int
    mean: dict[str, Interval]
    vs_baseline: dict[str, Interval] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n_tiles": self.n_tiles,
            "mean": {k: v.to_dict() for k, v in self.mean.items()},
            "vs_baseline": {k: v.to_dict() for k, v in self.vs_baseline.items()},
        }


@dataclass
class QualityResult:
    """Everything :meth:`QualityAccumulator.summarize` computed."""

    settings: MetricSettings
    models: list[str]
    summary: dict[str, ModelQuality]
    baseline: str | None
    n_boot: int
    seed: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric_settings": self.settings.to_dict(),
            "bootstrap": {
                "method": "percentile",
                "n_boot": self.n_boot,
                "seed": self.seed,
                "confidence": self.confidence,
                "relative_difference": "(mean_model - mean_baseline) / |mean_baseline|, "
                "paired resampling of tiles",
                "psnr_cap_db": PSNR_CAP,
            },
            "baseline": self.baseline,
            "models": {m: self.summary[m].to_dict() for m in self.models},
        }


def _finite_for_mean(metric: str, values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if metric == "psnr":
        v = np.minimum(v, PSNR_CAP)
    return v


def _quantiles(confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise BenchmarkError(f"confidence must be in (0, 1), got {confidence}")
    alpha = (1.0 - confidence) / 2.0
    return 100.0 * alpha, 100.0 * (1.0 - alpha)


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    rng: np.random.Generator,
) -> Interval:
    """Mean of the finite ``values`` with a percentile bootstrap interval.

    ``nan`` entries are dropped first; no values at all gives ``nan`` with ``n = 0``.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    n = v.size
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    lo_q, hi_q = _quantiles(confidence)
    idx = rng.integers(0, n, size=(n_boot, n))
    means = v[idx].mean(axis=1)
    low, high = np.percentile(means, [lo_q, hi_q])
    return Interval(float(v.mean()), float(low), float(high), n)


def bootstrap_relative_difference(
    model: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    rng: np.random.Generator,
) -> Interval:
    """``(mean(model) - mean(baseline)) / |mean(baseline)|`` with a paired bootstrap interval.

    ``model`` and ``baseline`` hold values for the same tiles in the same order; tiles where
    either is ``nan`` are dropped. A resample whose baseline mean is 0 gives ``nan`` and is
    ignored by the percentiles.
    """
    m = np.asarray(model, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if m.shape != b.shape:
        raise BenchmarkError(f"paired values differ in shape: {m.shape} vs {b.shape}")
    keep = ~(np.isnan(m) | np.isnan(b))
    m, b = m[keep], b[keep]
    n = m.size
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)

    def rel(mm: np.ndarray, bb: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(bb != 0, (mm - bb) / np.abs(bb), np.nan)

    lo_q, hi_q = _quantiles(confidence)
    idx = rng.integers(0, n, size=(n_boot, n))
    diffs = rel(m[idx].mean(axis=1), b[idx].mean(axis=1))
    point = float(rel(np.array([m.mean()]), np.array([b.mean()]))[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = (
            np.nanpercentile(diffs, [lo_q, hi_q])
            if np.any(~np.isnan(diffs))
            else (
                np.nan,
                np.nan,
            )
        )
    return Interval(point, float(low), float(high), n)


class QualityAccumulator:
    """Collects per-tile metric values per model, in any order and batch size.

    ``add(model, tile_ids, prediction, target)`` computes :func:`~stainbench.metrics.all_metrics`
    for a batch ``(B, H, W, 3)`` and stores one row per tile. ``tile_ids`` identify the tiles
    (indices into the validation set); adding a tile twice for one model is an error.
    """

    def __init__(self, settings: MetricSettings) -> None:
        self.settings = settings
        self._values: dict[str, dict[int, dict[str, float]]] = {}

    @property
    def models(self) -> list[str]:
        return list(self._values)

    def tiles(self, model: str) -> list[int]:
        return sorted(self._values.get(model, {}))

    def add(
        self, model: str, tile_ids: Iterable[int], prediction: np.ndarray, target: np.ndarray
    ) -> dict[str, np.ndarray]:
        ids = [int(i) for i in tile_ids]
        prediction = np.asarray(prediction)
        if prediction.ndim != 4 or prediction.shape[0] != len(ids):
            raise BenchmarkError(
                f"model {model!r}: got {len(ids)} tile ids for a prediction of shape "
                f"{prediction.shape}; expected (len(tile_ids), H, W, 3)"
            )
        values = all_metrics(prediction, target, self.settings)
        rows = self._values.setdefault(model, {})
        for j, tile in enumerate(ids):
            if tile in rows:
                raise BenchmarkError(f"model {model!r}: tile {tile} was added twice")
            rows[tile] = {name: float(values[name][j]) for name in METRICS}
        return values

    def add_identity(
        self, tile_ids: Iterable[int], inputs: np.ndarray, target: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The identity row: the model whose output is its input."""
        return self.add(IDENTITY, tile_ids, inputs, target)

    def values(self, model: str, metric: str, tiles: Sequence[int] | None = None) -> np.ndarray:
        """Per-tile values ``(n,)`` of one metric, for ``tiles`` (default: all, sorted)."""
        rows = self._values.get(model)
        if rows is None:
            raise BenchmarkError(f"no quality values for model {model!r}")
        tiles = self.tiles(model) if tiles is None else tiles
        return np.array([rows[t][metric] for t in tiles], dtype=np.float64)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (model, tile): ``{"model", "tile", <metric>: value, ...}``."""
        return [
            {"model": m, "tile": t, **self._values[m][t]}
            for m in self._values
            for t in sorted(self._values[m])
        ]

    def summarize(
        self,
        *,
        baseline: str | None = None,
        n_boot: int = 2000,
        seed: int = 0,
        confidence: float = 0.95,
    ) -> QualityResult:
        """Means with bootstrap intervals, and relative differences to ``baseline``.

        Each (model, metric) gets its own generator ``default_rng([seed, i_model, i_metric])``
        so the result does not depend on which other models are present.
        """
        if n_boot < 100:
            raise BenchmarkError(f"n_boot must be at least 100, got {n_boot}")
        if baseline is not None and baseline not in self._values:
            raise BenchmarkError(
                f"baseline model {baseline!r} has no results; measured models: "
                f"{', '.join(self.models) or 'none'}"
            )
        summary: dict[str, ModelQuality] = {}
        for model in self.models:
            mi = _stable_id(model)
            mean = {
                metric: bootstrap_mean(
                    _finite_for_mean(metric, self.values(model, metric)),
                    n_boot=n_boot,
                    confidence=confidence,
                    rng=np.random.default_rng([seed, mi, k]),
                )
                for k, metric in enumerate(METRICS)
            }
            vs: dict[str, Interval] = {}
            if baseline is not None and model != baseline:
                common = sorted(set(self.tiles(model)) & set(self.tiles(baseline)))
                for k, metric in enumerate(METRICS):
                    vs[metric] = bootstrap_relative_difference(
                        _finite_for_mean(metric, self.values(model, metric, common)),
                        _finite_for_mean(metric, self.values(baseline, metric, common)),
                        n_boot=n_boot,
                        confidence=confidence,
                        rng=np.random.default_rng([seed, mi, k, 1]),
                    )
            summary[model] = ModelQuality(model, len(self.tiles(model)), mean, vs)
        return QualityResult(
            settings=self.settings,
            models=self.models,
            summary=summary,
            baseline=baseline,
            n_boot=n_boot,
            seed=seed,
            confidence=confidence,
        )


def _stable_id(name: str) -> int:
    """A process-independent integer for a model name (Python's hash() is salted)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
