"""Patches from volume stores: 2D slices, 2.5D stacks of neighbouring slices, 3D sub-volumes.

Shapes of one item (``C`` channels of the stored volume, ``P`` = ``patch_size``, ``D`` =
``depth``):

- ``"2d"``: ``A`` and ``B`` are ``(C, P, P)`` from one z slice;
- ``"2.5d"``: ``A`` is ``(D * C, P, P)``: the ``D`` slices centred on z stacked as channels
  (slice-major: channels of slice ``z - D//2`` first); ``B`` is the centre slice ``(C, P, P)``;
- ``"3d"``: ``A`` and ``B`` are ``(C, D, P, P)``.

Items hold raw patches (the stored dtype) and their normalization parameters, as the tile
datasets (:mod:`stainbench.data.datasets`): ``"A_norm"`` is ``(2, C_A)`` float32 with the
channels of ``A``'s layout (a 2.5D stack repeats the volume's C channels for each slice);
:func:`~stainbench.data.transforms.normalize_batch` gives the float32 network inputs.

Only slices inside the split's z range are used (neighbours included), so a region split by
z never leaks validation slices into training stacks. Zarr reads only the chunks a patch
touches. Augmentation flips and rotates in the (y, x) plane, identically on A and B.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from stainbench.data.augment import PatchParams, apply_params
from stainbench.data.fastread import ChunkReader
from stainbench.data.stats import FIELDS
from stainbench.data.store import TileStore, VolumeRef, open_store
from stainbench.data.transforms import MODES, NORM_SUFFIX, Normalization, normalize_batch
from stainbench.errors import DataError

VOLUME_MODES = ("2d", "2.5d", "3d")


@dataclass(frozen=True)
class _Span:
    """Valid patch origins of one volume in the split."""

    name: str
    z_lo: int  # first valid z origin (2d/3d: start slice; 2.5d: centre slice)
    z_hi: int  # one past the last valid z origin
    ny: int  # grid cells along y / x (non-overlapping patches)
    nx: int
    height: int
    width: int

    @property
    def n_grid(self) -> int:
        return (self.z_hi - self.z_lo) * self.ny * self.nx


class VolumePatchDataset(Dataset):
    """Patches of a volume store (see the module docstring for shapes).

    ``store``: path or :class:`TileStore` of kind ``volume``; ``split``: ``"train"``/``"val"``;
    ``patch_size``: P in pixels; ``mode``: ``"2d"``, ``"2.5d"`` or ``"3d"``; ``depth``: slices
    per 2.5D stack (odd) or 3D patch; ``normalization``: a mode or ``{"A", "B"}`` mapping;
    ``augment``: random position, flip and rotation (default: on for ``train``; otherwise the
    patches of a non-overlapping grid in order); ``samples_per_epoch``: length (default: the
    number of grid patches).
    """

    def __init__(
        self,
        store: str | Path | TileStore,
        split: str,
        patch_size: int,
        mode: str = "2d",
        depth: int = 5,
        normalization: str | Mapping[str, Normalization] = "range",
        augment: bool | None = None,
        seed: int = 0,
        samples_per_epoch: int | None = None,
    ) -> None:
        opened = store if isinstance(store, TileStore) else open_store(store)
        if opened.kind != "volume":
            raise DataError(
                f"{opened.path}: VolumePatchDataset needs a volume store, this one is {opened.kind}"
            )
        if mode not in VOLUME_MODES:
            raise DataError(f"unknown volume mode {mode!r} (use {', '.join(VOLUME_MODES)})")
        if mode == "2.5d" and depth % 2 == 0:
            raise DataError(f"2.5d needs an odd depth (a centre slice), got {depth}")
        self.path = opened.path
        self.split = split
        self.patch_size = int(patch_size)
        self.mode = mode
        self.depth = 1 if mode == "2d" else int(depth)
        self.seed = int(seed)
        self.epoch = 0
        self.augment = (split == "train") if augment is None else bool(augment)
        self.manifest_hash = opened.manifest_hash
        self._store: TileStore | None = None
        self._readers: dict[tuple[str, str], ChunkReader | None] = {}
        self.fast_read = True
        self.domains = opened.domains(split)
        self.spans = self._spans(opened, opened.volumes(split))
        self._cum = np.cumsum([s.n_grid for s in self.spans])
        if self._cum[-1] == 0:
            raise DataError(
                f"{self.path}: split {split!r} has no room for a {self.patch_size}px patch of "
                f"depth {self.depth}"
            )
        self.length = int(samples_per_epoch) if samples_per_epoch else int(self._cum[-1])
        self._mode = normalization if isinstance(normalization, str) else None
        self.normalization = self._normalizations(opened, normalization)
        self._per_volume = opened.stats.get("per_volume", {})

    def _spans(self, store: TileStore, refs: list[VolumeRef]) -> list[_Span]:
        p, d = self.patch_size, self.depth
        spans = []
        for ref in refs:
            shape = store.volume_array(ref.name, self.domains[0]).shape
            if p > shape[1] or p > shape[2]:
                raise DataError(
                    f"patch size {p} is larger than volume {ref.name} ({shape[1]}x{shape[2]})"
                )
            z0, z1 = ref.z
            if self.mode == "2.5d":
                lo, hi = z0 + d // 2, z1 - d // 2
            else:
                lo, hi = z0, z1 - d + 1
            spans.append(
                _Span(ref.name, lo, max(lo, hi), shape[1] // p, shape[2] // p, shape[1], shape[2])
            )
        return spans

    def _normalizations(
        self, store: TileStore, arg: str | Mapping[str, Normalization]
    ) -> dict[str, Normalization]:
        if not isinstance(arg, str):
            missing = [d for d in self.domains if d not in arg]
            if missing:
                raise DataError(f"normalization mapping lacks domain(s) {', '.join(missing)}")
            return {d: arg[d] for d in self.domains}
        if arg not in MODES:
            raise DataError(f"unknown normalization mode {arg!r} (use {', '.join(MODES)})")
        out = {}
        for d in self.domains:
            arr = store.volume_array(self.spans[0].name, d)
            if arg == "range":
                hi = float(np.iinfo(arr.dtype).max)
                values = {"mean": [0.0] * int(arr.shape[-1])}
                out[d] = Normalization.from_values("range", d, values, (0.0, hi))
            else:
                out[d] = Normalization.from_stats(store.stats, arg, d)
        return out

    # -- torch Dataset -------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random patches ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None  # each worker opens the store itself
        state["_readers"] = {}
        return state

    @property
    def store(self) -> TileStore:
        if self._store is None:
            self._store = open_store(self.path)
        return self._store

    def _reader(self, volume: str, domain: str) -> ChunkReader | None:
        """Fast chunk reader of one volume array (None: read through zarr)."""
        if not self.fast_read:
            return None
        key = (volume, domain)
        if key not in self._readers:
            self._readers[key] = ChunkReader.for_array(self.path / "volumes" / volume / domain)
        return self._readers[key]

    def __len__(self) -> int:
        return self.length

    def locate(self, index: int) -> tuple[_Span, int, PatchParams]:
        """Volume, z origin and (y, x, flip, rotation) of item ``index`` in this epoch."""
        p = self.patch_size
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            weights = np.array([s.n_grid for s in self.spans], dtype=np.float64)
            span = self.spans[int(rng.choice(len(self.spans), p=weights / weights.sum()))]
            z = int(rng.integers(span.z_lo, span.z_hi))
            y = int(rng.integers(0, span.height - p + 1))
            x = int(rng.integers(0, span.width - p + 1))
            return span, z, PatchParams(y, x, bool(rng.integers(0, 2)), int(rng.integers(0, 4)))
        g = int(index) % int(self._cum[-1])
        k = int(np.searchsorted(self._cum, g, side="right"))
        span = self.spans[k]
        g -= int(self._cum[k - 1]) if k else 0
        z, rest = divmod(g, span.ny * span.nx)
        iy, ix = divmod(rest, span.nx)
        return span, span.z_lo + z, PatchParams(iy * p, ix * p)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Raw patches and their normalization parameters (see the module docstring)."""
        if not 0 <= index < self.length:
            raise IndexError(index)
        span, z, params = self.locate(index)
        p, d = self.patch_size, self.depth
        if self.mode == "2.5d":
            z_a, z_b = (z - d // 2, z + d // 2 + 1), (z, z + 1)
        else:
            z_a = z_b = (z, z + d)
        out = {}
        for domain in self.domains:
            zr = z_a if domain == "A" else z_b
            region = (slice(*zr), slice(params.y, params.y + p), slice(params.x, params.x + p))
            reader = self._reader(span.name, domain)
            if reader is not None:
                raw = reader.read(region)
            else:
                raw = np.asarray(self.store.volume_array(span.name, domain)[region])
            cdhw = apply_params(raw, params)  # (C, D, P, P)
            norm = self._norm(domain, span.name)
            repeat = 1
            if self.mode == "3d":
                tensor = cdhw
            elif self.mode == "2.5d" and domain == "A":
                tensor = np.swapaxes(cdhw, 0, 1).reshape(-1, p, p)  # slice-major channels
                repeat = cdhw.shape[1]
            else:
                tensor = cdhw[:, 0]
            out[domain] = torch.from_numpy(np.ascontiguousarray(tensor))
            out[domain + NORM_SUFFIX] = torch.from_numpy(norm.params(repeat))
        return out

    def normalized(self, index: int) -> dict[str, torch.Tensor]:
        """Item ``index`` as float32 network inputs (shapes as in the module docstring)."""
        return normalize_batch(self[index])

    def _norm(self, domain: str, volume: str) -> Normalization:
        norm = self.normalization[domain]
        if self._mode != "percentile":
            return norm
        stats = self._per_volume.get(volume, {}).get(domain)
        if not stats:
            return norm
        table = np.array([stats[f] for f in FIELDS], dtype=np.float64).T  # (C, FIELDS)
        return norm.for_image(table)
