"""Normalization: a per-channel affine map between raw pixel units and network inputs.

``x_norm = (x - offset) / scale`` and back ``x = x_norm * scale + offset``, with ``x`` in raw
pixel units (0..255 for uint8, 0..65535 for uint16). The three modes (see docs/DATA.md):

- ``range``: the dtype's fixed range to [-1, 1]: ``offset = scale = max/2`` (127.5 for uint8).
- ``zscore``: the data set's training-split mean and std: ``offset = mean``, ``scale = std``.
- ``percentile``: the 1st/99th percentiles ``p1``, ``p99`` to [-1, 1]:
  ``offset = (p1 + p99) / 2``, ``scale = (p99 - p1) / 2``. :meth:`Normalization.from_stats`
  uses the data set's percentiles (what a served model applies to an unknown image); the
  training datasets use each tile's own percentiles (:meth:`Normalization.for_image`).

Datasets return raw integer patches with their normalization parameters (``"A"`` and
``"A_norm"``, see :meth:`Normalization.params`); :func:`normalize_batch` turns a collated
batch into float32 network inputs once per batch (on the training device). It computes
exactly what :meth:`Normalization.forward` computes per item (the same float32 subtraction
and division, element by element), so the numbers are bit-identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from stainbench.data.stats import FIELDS, check_stats
from stainbench.errors import DataError

MODES = ("range", "zscore", "percentile")
#: Key suffix of an item's normalization parameters: ``item["A_norm"]`` belongs to ``item["A"]``.
NORM_SUFFIX = "_norm"
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

    def params(self, repeat: int = 1) -> np.ndarray:
        """``(2, C * repeat)`` float32: row 0 the offsets, row 1 the scales.

        ``repeat`` tiles the channels for stacks whose channels are ``repeat`` slices of C
        channels each, slice-major (2.5D inputs). These are the float32 values
        :meth:`forward` uses.
        """
        out = np.asarray([self.offset, self.scale], dtype=np.float32)
        return np.tile(out, (1, repeat)) if repeat > 1 else out

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


def normalize_raw(raw: Any, params: Any, out: Any = None) -> Any:
    """Raw patches to normalized float32: ``(raw - offset) / scale`` per channel.

    ``raw``: integer (uint8/uint16) tensor ``(*L, C, ...)`` - an item ``(C, H, W)`` /
    ``(C, D, H, W)`` or a batch with leading dims ``L = (B,)``; ``params``: float32 ``(*L, 2, C)``
    (:meth:`Normalization.params`, collated). Returns a new float32 tensor of ``raw``'s shape,
    on ``raw``'s device, or ``out`` (a contiguous float32 CPU tensor of that shape) filled.
    Element by element the same float32 operations as :meth:`Normalization.forward`, so
    the results are bit-identical. Integer tensors on the CPU go through one compiled pass
    (numba: 3x faster than torch's conversion, subtraction and division passes); others
    through torch.
    """
    import torch

    lead = tuple(params.shape[:-2])
    c = int(params.shape[-1])
    if tuple(raw.shape[: len(lead) + 1]) != (*lead, c):
        raise DataError(
            f"normalization parameters {tuple(params.shape)} do not fit patches "
            f"{tuple(raw.shape)} (expected leading dims {(*lead, c)})"
        )
    shape = (*lead, c, *([1] * (raw.ndim - len(lead) - 1)))
    p = torch.as_tensor(params, device=raw.device, dtype=torch.float32)
    kernel = _normalize_kernel() if raw.device.type == "cpu" else None
    if kernel is not None and raw.dtype in (torch.uint8, torch.uint16):
        n = 1
        for d in lead:
            n *= int(d)
        x = raw.contiguous()
        if out is None:
            out = torch.empty(raw.shape, dtype=torch.float32)
        if out.numel():
            kernel(
                x.numpy().reshape(n, c, -1),
                p.contiguous().numpy().reshape(n, 2, c),
                out.numpy().reshape(n, c, -1),
            )
        return out
    if out is not None:
        out.copy_(raw)  # exact for 8- and 16-bit integers
    else:
        out = raw.to(torch.float32)  # a new tensor
        if out.data_ptr() == raw.data_ptr():  # already float32: never modify the caller's
            out = out.clone()
    out.sub_(p[..., 0, :].reshape(shape))
    out.div_(p[..., 1, :].reshape(shape))
    return out


def normalize_batch(batch: Mapping[str, Any], device: Any = None) -> dict[str, Any]:
    """A collated batch of dataset items to network inputs, on ``device``.

    ``batch``: ``{"A": raw (B, C, ...), "A_norm": (B, 2, C), "B": ..., "B_norm": ...}`` as
    :class:`torch.utils.data.DataLoader` collates the datasets' items (a single item works
    too). Returns ``{"A": float32, "B": float32}`` normalized; keys without parameters pass
    through (moved to ``device``). The raw integers travel to the device (4x fewer bytes than
    float32 for uint8) and are normalized there.
    """
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key.endswith(NORM_SUFFIX):
            continue
        x = value.to(device, non_blocking=True) if device is not None else value
        params = batch.get(key + NORM_SUFFIX)
        out[key] = x if params is None else normalize_raw(x, params)
    return out


def _normalize_kernel() -> Any:
    """The compiled normalization loop (shared with the patch pipeline's kernels), or None
    where numba is not installed."""
    from stainbench.data.augment import _kernel

    return _kernel("normalize")
