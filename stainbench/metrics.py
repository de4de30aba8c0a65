"""Image-quality metrics for stain transfer: pure numpy functions, one value per image.

Every function takes a prediction and a target of the same shape, either one image
``(H, W, C)`` or a batch ``(N, H, W, C)`` (channels last, RGB for the stain metrics), as
``uint8``/``uint16`` or floating-point arrays. A single image gives a Python ``float``; a batch
gives a float64 array of shape ``(N,)`` with one value per image (never a batch average, so
that callers can bootstrap over tiles).

The value range is explicit: ``data_range`` defaults to 255 for ``uint8`` and 65535 for
``uint16`` and must be given for float arrays (e.g. ``1.0`` for images in [0, 1]). Shape or
dtype problems raise :class:`~stainbench.errors.DataError` naming both shapes.

Metrics (formulas in ``docs/COMPARE.md``):

- :func:`ssim`: structural similarity exactly as ``skimage.metrics.structural_similarity``
  with a Gaussian window (sigma 1.5, truncated at 3.5 sigma: an 11x11 window),
  ``use_sample_covariance=False``, explicit ``data_range``, ``channel_axis=-1`` (the mean
  over channels of the per-channel mean SSIM map). Higher is better, 1 for identical images.
- :func:`psnr`: ``10 log10(data_range^2 / MSE)`` in dB, ``inf`` for identical images.
- :func:`mae`: mean absolute error in the array's units (grey levels for uint8).
- :func:`histogram_kl`: colour-histogram KL divergence ``KL(target || prediction)`` per
  channel, Laplace-smoothed, averaged over channels, in nats. 0 for equal histograms.
- :func:`stain_scores`: colour deconvolution (``skimage.color.rgb2hed``) of both images, then
  the Pearson correlation of the chosen stain's optical density (DAB for IHC targets, eosin
  for H&E targets) and the Dice overlap of its positive masks (``OD > threshold``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from stainbench.errors import DataError

Stain = Literal["dab", "eosin", "hematoxylin"]

#: Gaussian window of SSIM (as in Wang et al. 2004 and skimage's ``gaussian_weights=True``).
SSIM_SIGMA = 1.5
#: skimage truncates the Gaussian at 3.5 sigma: window side ``2 * int(3.5 * 1.5 + 0.5) + 1``.
SSIM_TRUNCATE = 3.5
SSIM_WINDOW = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1  # 11
#: Channel of ``skimage.color.rgb2hed``'s output for each stain.
STAIN_CHANNEL: dict[str, int] = {"hematoxylin": 0, "eosin": 1, "dab": 2}
#: Default positive-mask thresholds in ``rgb2hed`` units (``-ln(I) / ln(1e6)`` projected on
#: the stain vector). DAB 0.05 is about decimal OD 0.30 and close to Otsu's threshold (0.062)
#: on skimage's immunohistochemistry image; eosin 0.02 is near Otsu (0.015-0.023) on the H&E
#: fields in ``../shared/data``; hematoxylin 0.025 near Otsu on the IHC image.
STAIN_THRESHOLD: dict[str, float] = {"dab": 0.05, "eosin": 0.02, "hematoxylin": 0.025}
#: Laplace pseudo-count added to every histogram bin before normalizing.
KL_PSEUDO_COUNT = 1.0
KL_BINS = 256


@dataclass(frozen=True)
class MetricSettings:
    """Everything that determines the metric values; saved with every result."""

    data_range: float
    ssim_window: int = SSIM_WINDOW
    ssim_sigma: float = SSIM_SIGMA
    ssim_gaussian_weights: bool = True
    ssim_use_sample_covariance: bool = False
    kl_bins: int = KL_BINS
    kl_pseudo_count: float = KL_PSEUDO_COUNT
    kl_direction: str = "KL(target || prediction)"
    stain: str = "dab"
    stain_threshold: float = STAIN_THRESHOLD["dab"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Metric names, in report order, with whether larger is better.
METRICS: dict[str, bool] = {
    "ssim": True,
    "psnr": True,
    "mae": False,
    "hist_kl": False,
    "stain_pearson": True,
    "stain_dice": True,
}


def default_data_range(dtype: np.dtype) -> float:
    """The value range of an integer dtype (255 for uint8); floats have no default."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    raise DataError(f"data_range must be given for {dtype} images (e.g. 1.0 for floats in [0, 1])")


def _check_pair(
    pred: np.ndarray, target: np.ndarray, data_range: float | None
) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """Validate shapes/dtypes; return both as batches ``(N, H, W, C)``, the range, batched."""
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise DataError(f"prediction shape {pred.shape} does not match target shape {target.shape}")
    if pred.ndim not in (3, 4):
        raise DataError(
            f"expected images (H, W, C) or batches (N, H, W, C); got prediction shape "
            f"{pred.shape} and target shape {target.shape}"
        )
    for name, arr in (("prediction", pred), ("target", target)):
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise DataError(f"{name} has dtype {arr.dtype}; expected an integer or float image")
    if data_range is None:
        if pred.dtype != target.dtype:
            raise DataError(
                f"prediction dtype {pred.dtype} differs from target dtype {target.dtype}; "
                "pass data_range explicitly"
            )
        data_range = default_data_range(pred.dtype)
    if not data_range > 0:
        raise DataError(f"data_range must be positive, got {data_range}")
    batched = pred.ndim == 4
    if not batched:
        pred, target = pred[None], target[None]
    return pred, target, float(data_range), batched


def _out(values: np.ndarray, batched: bool) -> np.ndarray | float:
    values = np.asarray(values, dtype=np.float64)
    return values if batched else float(values[0])


def ssim(
    pred: np.ndarray, target: np.ndarray, *, data_range: float | None = None
) -> np.ndarray | float:
    """Mean structural similarity per image, as skimage computes it (settings in the module doc).

    Images must be at least ``SSIM_WINDOW`` (11) pixels high and wide. Range ``[-1, 1]``.
    """
    from skimage.metrics import structural_similarity

    p, t, dr, batched = _check_pair(pred, target, data_range)
    if min(p.shape[1], p.shape[2]) < SSIM_WINDOW:
        raise DataError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels; got "
            f"prediction shape {np.shape(pred)} and target shape {np.shape(target)}"
        )
    values = [
        structural_similarity(
            p[i].astype(np.float64),
            t[i].astype(np.float64),
            gaussian_weights=True,
            sigma=SSIM_SIGMA,
            use_sample_covariance=False,
            data_range=dr,
            channel_axis=-1,
        )
        for i in range(p.shape[0])
    ]
    return _out(np.array(values), batched)


def _mse(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    diff = p.astype(np.float64) - t.astype(np.float64)
    return np.mean(diff * diff, axis=(1, 2, 3))


def psnr(
    pred: np.ndarray, target: np.ndarray, *, data_range: float | None = None
) -> np.ndarray | float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``; ``inf`` if equal."""
    p, t, dr, batched = _check_pair(pred, target, data_range)
    mse = _mse(p, t)
    with np.errstate(divide="ignore"):
        values = np.where(mse == 0, np.inf, 10.0 * np.log10(dr * dr / np.maximum(mse, 1e-300)))
    return _out(values, batched)


def mae(
    pred: np.ndarray, target: np.ndarray, *, data_range: float | None = None
) -> np.ndarray | float:
    """Mean absolute error in the images' units (grey levels 0..255 for uint8)."""
    p, t, _, batched = _check_pair(pred, target, data_range)
    values = np.mean(np.abs(p.astype(np.float64) - t.astype(np.float64)), axis=(1, 2, 3))
    return _out(values, batched)


def histogram_kl(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    data_range: float | None = None,
    bins: int = KL_BINS,
    pseudo_count: float = KL_PSEUDO_COUNT,
) -> np.ndarray | float:
    """Colour-histogram KL divergence ``KL(target || prediction)`` in nats, mean over channels.

    Per channel ``c``: counts ``h`` over ``bins`` equal bins of ``[0, data_range]``, smoothed
    ``q = (h + pseudo_count) / (n_pixels + bins * pseudo_count)``, then
    ``sum_b q_target[b] * ln(q_target[b] / q_pred[b])``. Values outside the range are clipped
    into the end bins. ``>= 0``, 0 for identical histograms.
    """
    p, t, dr, batched = _check_pair(pred, target, data_range)
    if bins < 2 or pseudo_count <= 0:
        raise DataError(
            f"histogram_kl needs bins >= 2 and pseudo_count > 0, got {bins}, {pseudo_count}"
        )
    n, _, _, c = p.shape
    n_pix = p.shape[1] * p.shape[2]

    def hist(x: np.ndarray) -> np.ndarray:
        # bin index per pixel; bins equal-width over [0, dr], the top edge in the last bin
        idx = np.clip((x.astype(np.float64) / dr * bins).astype(np.int64), 0, bins - 1)
        idx = idx.reshape(n, n_pix, c).transpose(0, 2, 1)  # (N, C, P)
        offsets = (np.arange(n * c) * bins).reshape(n, c, 1)
        counts = np.bincount((idx + offsets).ravel(), minlength=n * c * bins)
        return counts.reshape(n, c, bins).astype(np.float64)

    qp = (hist(p) + pseudo_count) / (n_pix + bins * pseudo_count)
    qt = (hist(t) + pseudo_count) / (n_pix + bins * pseudo_count)
    kl = np.sum(qt * (np.log(qt) - np.log(qp)), axis=2)  # (N, C)
    return _out(kl.mean(axis=1), batched)


def stain_density(
    image: np.ndarray, *, stain: Stain = "dab", data_range: float | None = None
) -> np.ndarray:
    """One stain's optical density from colour deconvolution (``skimage.color.rgb2hed``).

    ``image``: RGB ``(H, W, 3)`` or ``(N, H, W, 3)``; returns float64 ``(H, W)`` or
    ``(N, H, W)`` in rgb2hed units (``>= 0``; natural-log OD divided by ``ln(1e6)``).
    """
    from skimage.color import rgb2hed

    image = np.asarray(image)
    if image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise DataError(f"stain deconvolution needs RGB images (..., H, W, 3); got {image.shape}")
    if stain not in STAIN_CHANNEL:
        raise DataError(f"unknown stain {stain!r}; choose one of {sorted(STAIN_CHANNEL)}")
    dr = default_data_range(image.dtype) if data_range is None else float(data_range)
    rgb = np.clip(image.astype(np.float64) / dr, 0.0, 1.0)
    return rgb2hed(rgb, channel_axis=-1)[..., STAIN_CHANNEL[stain]]


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation per row of ``(N, P)`` arrays; ``nan`` where either row is constant."""
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt(np.sum(x * x, axis=1) * np.sum(y * y, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sum(x * y, axis=1) / denom
    return np.where(denom > 0, np.clip(r, -1.0, 1.0), np.nan)


def dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dice overlap ``2|A∩B| / (|A|+|B|)`` per row of boolean ``(N, P)`` masks; 1 if both empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise DataError(f"mask shape {a.shape} does not match mask shape {b.shape}")
    inter = np.sum(a & b, axis=-1).astype(np.float64)
    total = np.sum(a, axis=-1).astype(np.float64) + np.sum(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))


def stain_scores(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    stain: Stain = "dab",
    threshold: float | None = None,
    data_range: float | None = None,
) -> dict[str, np.ndarray | float]:
    """Stain-aware agreement of RGB prediction and target after colour deconvolution.

    Returns ``{"pearson": r, "dice": d}``: the Pearson correlation of the stain's optical
    density over all pixels (``nan`` when either density map is constant, e.g. a blank tile),
    and the Dice overlap of the positive masks ``OD > threshold`` (default
    :data:`STAIN_THRESHOLD` for the stain; 1 when both masks are empty).
    """
    p, t, dr, batched = _check_pair(pred, target, data_range)
    if p.shape[-1] != 3:
        raise DataError(
            f"stain scores need RGB images; got prediction shape {np.shape(pred)} and target "
            f"shape {np.shape(target)}"
        )
    thr = STAIN_THRESHOLD.get(stain, 0.0) if threshold is None else float(threshold)
    od_p = stain_density(p, stain=stain, data_range=dr).reshape(p.shape[0], -1)
    od_t = stain_density(t, stain=stain, data_range=dr).reshape(t.shape[0], -1)
    return {
        "pearson": _out(pearson(od_p, od_t), batched),
        "dice": _out(dice(od_p > thr, od_t > thr), batched),
    }


def all_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    settings: MetricSettings,
) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` for a batch ``(N, H, W, 3)``: name -> ``(N,)`` float64."""
    pred, target, dr, _ = _check_pair(pred, target, settings.data_range)
    stain = stain_scores(
        pred, target, stain=settings.stain, threshold=settings.stain_threshold, data_range=dr
    )
    return {
        "ssim": np.asarray(ssim(pred, target, data_range=dr)),
        "psnr": np.asarray(psnr(pred, target, data_range=dr)),
        "mae": np.asarray(mae(pred, target, data_range=dr)),
        "hist_kl": np.asarray(
            histogram_kl(
                pred,
                target,
                data_range=dr,
                bins=settings.kl_bins,
                pseudo_count=settings.kl_pseudo_count,
            )
        ),
        "stain_pearson": np.asarray(stain["pearson"]),
        "stain_dice": np.asarray(stain["dice"]),
    }


def metric_settings(
    dtype: np.dtype | type = np.uint8,
    *,
    stain: Stain = "dab",
    threshold: float | None = None,
    data_range: float | None = None,
) -> MetricSettings:
    """Settings for images of ``dtype`` (``data_range`` defaults from it)."""
    if stain not in STAIN_CHANNEL:
        raise DataError(f"unknown stain {stain!r}; choose one of {sorted(STAIN_CHANNEL)}")
    dr = default_data_range(np.dtype(dtype)) if data_range is None else float(data_range)
    thr = STAIN_THRESHOLD[stain] if threshold is None else float(threshold)
    return MetricSettings(data_range=dr, stain=stain, stain_threshold=thr)
