"""PyTorch datasets over a store: paired, unpaired and volume patches.

Every item is a dict of raw patches and their normalization parameters::

    {"A": (C, P, P) uint8/uint16, "A_norm": (2, C) float32, "B": ..., "B_norm": ...}

channels first, with the stored dtype (flips and rotations are exact on integers).
``"A_norm"`` holds the offsets and scales of the dataset's
:class:`~stainbench.data.transforms.Normalization` for this patch (per tile in the
``percentile`` mode). :func:`~stainbench.data.transforms.normalize_batch` turns a collated
batch into the float32 network inputs once per batch, bit-identical to normalizing each item
(:meth:`normalized` does it for one item). Items depend only on
``(seed, epoch, index)``: the random crop/flip/rotation of item ``i`` in epoch ``e`` comes from
``numpy.random.default_rng([seed, e, i])``. The store is opened lazily in each process, so the
datasets can be handed to ``DataLoader(num_workers=N)``; only the chunks a patch touches are
read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from stainbench.data.augment import PatchParams, apply_params, sample_params
from stainbench.data.fastread import TileReader
from stainbench.data.store import TileStore, open_store
from stainbench.data.transforms import MODES, NORM_SUFFIX, Normalization, normalize_batch
from stainbench.errors import DataError

NormalizationArg = str | Mapping[str, Normalization]


class _StoreDataset(Dataset):
    """Shared plumbing: lazy store handle, normalization, epoch, RNG per item."""

    kind: tuple[str, ...] = ("paired", "unpaired")

    def __init__(
        self,
        store: str | Path | TileStore,
        split: str,
        patch_size: int | None,
        normalization: NormalizationArg = "range",
        augment: bool | None = None,
        seed: int = 0,
    ) -> None:
        opened = store if isinstance(store, TileStore) else open_store(store)
        if opened.kind not in self.kind:
            raise DataError(
                f"{opened.path}: {type(self).__name__} needs a {' or '.join(self.kind)} store, "
                f"this one is {opened.kind}"
            )
        self.path = opened.path
        self.split = split
        self.seed = int(seed)
        self.epoch = 0
        self.augment = (split == "train") if augment is None else bool(augment)
        self.manifest_hash = opened.manifest_hash
        self._store: TileStore | None = None
        self._readers: dict[str, TileReader | None] = {}
        self.fast_read = True
        self._per_image: dict[str, np.ndarray | None] = {}
        self._mode = normalization if isinstance(normalization, str) else None
        self.normalization = self._build_normalization(opened, normalization)

    def _build_normalization(
        self, store: TileStore, arg: NormalizationArg
    ) -> dict[str, Normalization]:
        domains = ("A", "B")
        if isinstance(arg, str):
            if arg not in MODES:
                raise DataError(f"unknown normalization mode {arg!r} (use {', '.join(MODES)})")
            if arg == "range":
                out = {}
                for d in domains:
                    vr = _value_range(store, self.split, d)
                    out[d] = Normalization.from_values("range", d, {"mean": [0.0] * vr[2]}, vr[:2])
                return out
            return {d: Normalization.from_stats(store.stats, arg, d) for d in domains}
        missing = [d for d in domains if d not in arg]
        if missing:
            raise DataError(f"normalization mapping lacks domain(s) {', '.join(missing)}")
        return {d: arg[d] for d in domains}

    # -- lifecycle ---------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random patches ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None  # each worker process opens the store itself
        state["_readers"] = {}
        return state

    @property
    def store(self) -> TileStore:
        if self._store is None:
            self._store = open_store(self.path)
        return self._store

    def _reader(self, domain: str) -> TileReader | None:
        """The fast whole-tile reader of a domain (None: read through zarr)."""
        if not self.fast_read:
            return None
        if domain not in self._readers:
            self._readers[domain] = TileReader.for_array(self.path / self.split / domain)
        return self._readers[domain]

    def _rng(self, index: int) -> np.random.Generator | None:
        if not self.augment:
            return None
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _norm_for(self, domain: str, tile: int) -> Normalization:
        norm = self.normalization[domain]
        if self._mode != "percentile":
            return norm
        if domain not in self._per_image:
            self._per_image[domain] = self.store.per_image_stats(self.split, domain)
        per = self._per_image[domain]
        if per is None:
            return norm
        return norm.for_image(per[tile])

    def _read(
        self, out: dict[str, torch.Tensor], domain: str, tile: int, params: PatchParams, patch: int
    ) -> None:
        """Put the raw ``(C, P, P)`` patch and its ``(2, C)`` normalization into ``out``."""
        ys, xs = slice(params.y, params.y + patch), slice(params.x, params.x + patch)
        reader = self._reader(domain)
        if reader is not None:
            raw = reader.read_tile(tile)[ys, xs]
        else:
            raw = np.asarray(self.store.array(self.split, domain)[tile, ys, xs, :])
        out[domain] = torch.from_numpy(apply_params(raw, params))
        out[domain + NORM_SUFFIX] = torch.from_numpy(self._norm_for(domain, tile).params())

    def normalized(self, index: int) -> dict[str, torch.Tensor]:
        """Item ``index`` as float32 network inputs ``{"A": (C, P, P), "B": ...}``."""
        return normalize_batch(self[index])


def _value_range(store: TileStore, split: str, domain: str) -> tuple[float, float, int]:
    """``(0, dtype max, channels)`` of a domain's array."""
    arr = store.array(split, domain)
    return 0.0, float(np.iinfo(arr.dtype).max), int(arr.shape[-1])


class PairedPatchDataset(_StoreDataset):
    """Aligned ``{"A": (C, P, P), "B": (C, P, P)}`` raw patches of a paired store (with their
    ``"A_norm"``/``"B_norm"`` parameters, see the module docstring).

    ``store``: path or :class:`TileStore`; ``split``: ``"train"``/``"val"``; ``patch_size``: P
    (None: the whole tile); ``normalization``: a mode (``"range"``, ``"zscore"``,
    ``"percentile"``) read from the store's training statistics, or a ``{"A", "B"}`` mapping
    of :class:`Normalization` (e.g. from a checkpoint); ``augment``: random crop, flip and 90°
    rotation, identical on A and B (default: on for ``train``, off otherwise: centred crop).
    """

    kind = ("paired",)

    def __init__(
        self,
        store: str | Path | TileStore,
        split: str,
        patch_size: int | None = None,
        normalization: NormalizationArg = "range",
        augment: bool | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(store, split, patch_size, normalization, augment, seed)
        opened = open_store(self.path) if not isinstance(store, TileStore) else store
        a, b = opened.array(split, "A"), opened.array(split, "B")
        if a.shape[:3] != b.shape[:3]:
            raise DataError(
                f"{self.path}: split {split!r}: A {a.shape} and B {b.shape} are not paired"
            )
        self.length = int(a.shape[0])
        self.tile_hw = (int(a.shape[1]), int(a.shape[2]))
        self.patch_size = int(patch_size) if patch_size else min(self.tile_hw)
        sample_params(None, *self.tile_hw, self.patch_size)  # validates the patch size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        params = sample_params(self._rng(index), *self.tile_hw, self.patch_size)
        out: dict[str, torch.Tensor] = {}
        self._read(out, "A", index, params, self.patch_size)
        self._read(out, "B", index, params, self.patch_size)
        return out


class UnpairedPatchDataset(_StoreDataset):
    """Independent ``{"A", "B"}`` patches of a store (unpaired, or paired used as unpaired).

    Length is the larger domain's tile count. Item ``i`` takes A tile ``i % N_A`` and, when
    augmenting, a B tile drawn from the item's RNG (otherwise ``i % N_B``); each side gets its
    own crop/flip/rotation. Arguments as :class:`PairedPatchDataset`.
    """

    def __init__(
        self,
        store: str | Path | TileStore,
        split: str,
        patch_size: int | None = None,
        normalization: NormalizationArg = "range",
        augment: bool | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(store, split, patch_size, normalization, augment, seed)
        opened = open_store(self.path) if not isinstance(store, TileStore) else store
        arrays = {d: opened.array(split, d) for d in ("A", "B")}
        self.counts = {d: int(a.shape[0]) for d, a in arrays.items()}
        if min(self.counts.values()) == 0:
            raise DataError(f"{self.path}: split {split!r} has an empty domain")
        self.tile_hw = {d: (int(a.shape[1]), int(a.shape[2])) for d, a in arrays.items()}
        smallest = min(min(hw) for hw in self.tile_hw.values())
        self.patch_size = int(patch_size) if patch_size else smallest
        for hw in self.tile_hw.values():
            sample_params(None, *hw, self.patch_size)

    def __len__(self) -> int:
        return max(self.counts.values())

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = self._rng(index)
        ia = index % self.counts["A"]
        ib = int(rng.integers(0, self.counts["B"])) if rng is not None else index % self.counts["B"]
        pa = sample_params(rng, *self.tile_hw["A"], self.patch_size)
        pb = sample_params(rng, *self.tile_hw["B"], self.patch_size)
        out: dict[str, torch.Tensor] = {}
        self._read(out, "A", ia, pa, self.patch_size)
        self._read(out, "B", ib, pb, self.patch_size)
        return out


# Volume patches live in their own module; re-exported here so that every dataset comes from
# ``stainbench.data.datasets``.
from stainbench.data.volume_dataset import VolumePatchDataset  # noqa: E402

__all__ = ["PairedPatchDataset", "UnpairedPatchDataset", "VolumePatchDataset"]
