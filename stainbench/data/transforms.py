"""Normalization: a per-channel affine map between raw pixel units and network inputs.

``x_norm = (x - offset) / scale`` and back ``x = x_norm * scale + offset``, with ``x`` in raw
pixel units (0..255 for uint8, 0..65535 for uint16). The three modes (see docs/DATA.md):

- ``range``: the dtype's fixed range to [-1, 1]: ``offset = scale = max/2`` (127.5 for uint8).
- ``zscore``: the data set's training-split mean and std: ``offset = mean``, ``scale = std``.
- ``percentile``: the 1st/99th percentiles ``p1``, ``p99`` to [-1, 1]:
  ``offset = (p1 + p99) / 2``, ``scale = (p99 - p1) / 2``. :meth:`Normalization.from_stats`
  uses the data set's percentiles (what a served model applies to an unknown image); the
  training datasets use each tile's own percentiles (:meth:`Normalization.for_image`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from stainbench.data.stats import FIELDS, check_stats
from stainbench.errors import DataError

MODES = ("range", "zscore", "percentile")
NORMALIZATION_SCHEMA_VERSION = 1
#: Smallest scale used, so that a constant channel does not divide by zero (raw units).
MIN_SCALE = 1e-6

ArrayT = TypeVar("ArrayT")


@dataclass(frozen=True)
class Normalization:
    """Per-channel affine normalization of one domain.

    ``offset`` and ``scale`` have one float per channel, in raw pixel units.
    """

    mode: str
    domain: str
    offset: tuple[float, ...]
    scale: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DataError(f"unknown normalization mode {self.mode!r} (use {', '.join(MODES)})")
        if len(self.offset) != len(self.scale) or not self.offset:
            raise DataError(
                f"normalization {self.domain}: offset ({len(self.offset)}) and scale "
                f"({len(self.scale)}) need the same, non-zero number of channels"
            )
        if any(not np.isfinite(s) or s <= 0 for s in self.scale) or not all(
            np.isfinite(self.offset)
        ):
            raise DataError(
                f"normalization {self.domain}: scales must be finite and > 0, offsets finite"
            )

    @property
    def channels(self) -> int:
        return len(self.offset)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_stats(
        cls, stats: Mapping[str, Any], mode: str, domain: str, split: str = "train"
    ) -> Normalization:
        """Build the normalization of ``domain`` from a store's statistics.

        Uses the ``split`` statistics (training split by default, so validation data never
        leaks into the normalization).
        """
        check_stats(stats)
        if mode not in MODES:
            raise DataError(f"unknown normalization mode {mode!r} (use {', '.join(MODES)})")
        try:
            ds = stats["splits"][split][domain]
        except KeyError:
            raise DataError(
                f"statistics have no split {split!r} / domain {domain!r}; "
                "run 'stainbench data stats'"
            ) from None
        return cls.from_values(mode, domain, ds, ds.get("value_range", [0, 255]))

    @classmethod
    def from_values(
        cls,
        mode: str,
        domain: str,
        values: Mapping[str, Sequence[float]],
        value_range: Sequence[float] = (0, 255),
    ) -> Normalization:
        """From a mapping of per-channel ``mean``/``std``/``p1``/``p99`` lists."""
        c = len(values["mean"])
        if mode == "range":
            lo, hi = float(value_range[0]), float(value_range[1])
            offset = [(lo + hi) / 2.0] * c
            scale = [(hi - lo) / 2.0] * c
        elif mode == "zscore":
            offset = [float(v) for v in values["mean"]]
            scale = [max(float(v), MIN_SCALE) for v in values["std"]]
        elif mode == "percentile":
            lo_p = [float(v) for v in values["p1"]]
            hi_p = [float(v) for v in values["p99"]]
            offset = [(a + b) / 2.0 for a, b in zip(lo_p, hi_p, strict=True)]
            scale = [max((b - a) / 2.0, MIN_SCALE) for a, b in zip(lo_p, hi_p, strict=True)]
        else:
            raise DataError(f"unknown normalization mode {mode!r} (use {', '.join(MODES)})")
        return cls(mode, domain, tuple(offset), tuple(scale))

    def for_image(self, image_stats: np.ndarray) -> Normalization:
        """This normalization re-derived from one image's stats ``(C, len(FIELDS))``.

        Only ``percentile`` (and ``zscore``) depend on the image; ``range`` returns itself.
        """
        if self.mode == "range":
            return self
        values = {f: list(image_stats[:, i]) for i, f in enumerate(FIELDS)}
        return Normalization.from_values(self.mode, self.domain, values)

    # -- serialization -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for checkpoints and exported models."""
        return {
            "schema_version": NORMALIZATION_SCHEMA_VERSION,
            "mode": self.mode,
            "domain": self.domain,
            "offset": [float(v) for v in self.offset],
            "scale": [float(v) for v in self.scale],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalization:
        """Inverse of :meth:`to_dict`; :class:`DataError` for anything malformed."""
        if not isinstance(data, Mapping):
            raise DataError(f"normalization: expected a mapping, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != NORMALIZATION_SCHEMA_VERSION:
            raise DataError(
                f"normalization schema version {version!r}, expected {NORMALIZATION_SCHEMA_VERSION}"
            )
        try:
            return cls(
                str(data["mode"]),
                str(data["domain"]),
                tuple(float(v) for v in data["offset"]),
                tuple(float(v) for v in data["scale"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"normalization: malformed entry ({exc})") from None

    # -- application -------------------------------------------------------------------------

    def forward(self, x: ArrayT, channel_axis: int = -3) -> ArrayT:
        """Raw pixel values to normalized float32 (numpy array or torch tensor).

        ``x``: any shape with the channels on ``channel_axis`` (default -3: ``(C, H, W)`` or
        ``(B, C, H, W)``; pass -1 for ``(..., H, W, C)``).
        """
        offset, scale = self._params(x, channel_axis)
        return (_to_float(x) - offset) / scale  # type: ignore[operator,return-value]

    def inverse(self, x: ArrayT, channel_axis: int = -3) -> ArrayT:
        """Normalized values back to raw pixel units (float32, not rounded or clipped)."""
        offset, scale = self._params(x, channel_axis)
        return _to_float(x) * scale + offset  # type: ignore[operator,return-value]

    def _params(self, x: Any, channel_axis: int) -> tuple[Any, Any]:
        ndim = x.ndim
        axis = channel_axis % ndim
        if x.shape[axis] != self.channels:
            raise DataError(
                f"normalization {self.domain}: expected {self.channels} channels on axis "
                f"{channel_axis}, got shape {tuple(x.shape)}"
            )
        shape = [1] * ndim
        shape[axis] = self.channels
        offset = np.asarray(self.offset, dtype=np.float32).reshape(shape)
        scale = np.asarray(self.scale, dtype=np.float32).reshape(shape)
        if not isinstance(x, np.ndarray):
            import torch

            return (
                torch.as_tensor(offset, device=x.device),
                torch.as_tensor(scale, device=x.device),
            )
        return offset, scale


def _to_float(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False)
    return x.float()
