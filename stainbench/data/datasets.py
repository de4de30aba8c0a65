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
read. ``DataLoader`` fetches a batch through :meth:`__getitems__`: the batch's tiles are
decoded into one array (each chunk once per batch), then cropped, flipped/rotated and made
channels-first in one compiled pass (:func:`~stainbench.data.augment.transform_batch`).

The tile datasets also write a whole batch in place, the layout
:func:`~torch.utils.data.default_collate` gives their items (``batch_layout(n)`` and
``fill_batch(indices, out)``): :class:`~stainbench.data.loader.PatchLoader` uses that to build
batches without per-item tensors or collation, in reused (shared) memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from stainbench.data.augment import (
    PatchParams,
    sample_params,
    sample_params_batch,
    seeded_integers,
    transform_batch,
)
from stainbench.data.fastread import TileReader
from stainbench.data.store import TileStore, open_store
from stainbench.data.transforms import MODES, NORM_SUFFIX, Normalization, normalize_batch
from stainbench.errors import DataError

NormalizationArg = str | Mapping[str, Normalization]


class _StoreDataset(Dataset):
    """Shared plumbing: lazy store handle, normalization, epoch, RNG per item."""

    kind: tuple[str, ...] = ("paired", "unpaired")
    #: :meth:`batch_layout` and :meth:`fill_batch` are available (see the module docstring).
    fills_batches = True

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
        self._tile_buffers: dict[str, np.ndarray] = {}
        self._mode = normalization if isinstance(normalization, str) else None
        self.normalization = self._build_normalization(opened, normalization)
        arrays = {d: opened.array(split, d) for d in ("A", "B")}
        #: (dtype, channels) of each domain's stored tiles
        self._layouts = {d: (np.dtype(a.dtype), int(a.shape[-1])) for d, a in arrays.items()}

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
        state["_tile_buffers"] = {}
        return state

    @property
    def store(self) -> TileStore:
        if self._store is None:
            self._store = open_store(self.path)
        return self._store

    def _reader(self, domain: str) -> TileReader | None:
        """The fast tile reader of a domain (None: read through zarr)."""
        if not self.fast_read:
            return None
        if domain not in self._readers:
            self._readers[domain] = TileReader.for_array(self.path / self.split / domain)
        return self._readers[domain]

    def _tiles(self, domain: str, tiles: Sequence[int]) -> np.ndarray:
        """Tiles ``tiles`` of a domain as one ``(n, H, W, C)`` array (each chunk read once),
        in a buffer of this dataset that the next call overwrites (a fresh array per batch
        costs page faults on every batch)."""
        n = len(tiles)
        buf = self._tile_buffers.get(domain)
        if buf is None or buf.shape[0] < n:
            arr = self.store.array(self.split, domain)
            buf = np.empty((n, *arr.shape[1:]), dtype=arr.dtype)
            self._tile_buffers[domain] = buf
        out = buf[:n]
        reader = self._reader(domain)
        if reader is not None:
            return reader.read_tiles(tiles, out=out)
        arr = self.store.array(self.split, domain)
        for j, t in enumerate(tiles):  # zarr's own batched selections are slower here
            out[j] = arr[int(t)]
        return out

    def _keys(self, indices: Sequence[int]) -> list[tuple[int, int, int]] | None:
        """The ``default_rng`` keys of items ``indices`` (None: no augmentation), for
        :func:`~stainbench.data.augment.seeded_integers` (the numbers
        ``numpy.random.default_rng(key)`` would draw)."""
        if not self.augment:
            return None
        return [(self.seed, self.epoch, int(i)) for i in indices]

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

    def _fill_domain(
        self,
        domain: str,
        tiles: Sequence[int],
        params: Sequence[PatchParams],
        out: Mapping[str, np.ndarray],
    ) -> None:
        """Write the raw ``(n, C, P, P)`` patches and ``(n, 2, C)`` normalizations of
        ``domain`` into ``out[domain]`` and ``out[domain + "_norm"]``."""
        data = self._tiles(domain, tiles)
        transform_batch(data, list(params), self.patch_size, out=out[domain])
        norms = out[domain + NORM_SUFFIX]
        if self._mode != "percentile":
            norms[:] = self.normalization[domain].params()
        else:
            for j, tile in enumerate(tiles):
                norms[j] = self._norm_for(domain, tile).params()

    def batch_layout(self, n: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shape and dtype of every array of a batch of ``n`` items, as :meth:`fill_batch`
        writes it (and ``default_collate`` stacks the items): ``"A"``/``"B"``
        ``(n, C, P, P)`` of the stored dtype, ``"A_norm"``/``"B_norm"`` ``(n, 2, C)``
        float32."""
        out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for d in ("A", "B"):
            dtype, c = self._layouts[d]
            out[d] = ((n, c, self.patch_size, self.patch_size), dtype)
            out[d + NORM_SUFFIX] = ((n, 2, self.normalization[d].channels), np.dtype(np.float32))
        return out

    def fill_batch(self, indices: Sequence[int], out: Mapping[str, np.ndarray]) -> None:
        """Write items ``indices`` as one batch into ``out``: C-contiguous arrays laid out as
        :meth:`batch_layout` ``(len(indices))`` says; the same numbers as collating
        ``self[i]`` for each index."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """The items ``indices`` (what ``DataLoader`` asks for one batch), read together:
        views of one batch written by :meth:`fill_batch`."""
        layout = self.batch_layout(len(indices))
        arrays = {k: np.empty(shape, dtype=dtype) for k, (shape, dtype) in layout.items()}
        self.fill_batch(indices, arrays)
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        return [{k: t[j] for k, t in tensors.items()} for j in range(len(indices))]

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

    def fill_batch(self, indices: Sequence[int], out: Mapping[str, np.ndarray]) -> None:
        """Items ``indices``: the same crop, flip and rotation for A and B of each pair."""
        tiles = [int(i) for i in indices]
        for i in tiles:
            if not 0 <= i < self.length:
                raise IndexError(i)
        params = sample_params_batch(self._keys(tiles), len(tiles), *self.tile_hw, self.patch_size)
        self._fill_domain("A", tiles, params, out)
        self._fill_domain("B", tiles, params, out)


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

    def fill_batch(self, indices: Sequence[int], out: Mapping[str, np.ndarray]) -> None:
        """Items ``indices``: A tile ``i % N_A`` and a B tile, each with its own transform."""
        for index in indices:
            if not 0 <= index < len(self):
                raise IndexError(index)
        p = self.patch_size
        (ha, wa), (hb, wb) = self.tile_hw["A"], self.tile_hw["B"]
        ia = [int(i) % self.counts["A"] for i in indices]
        keys = self._keys(indices)
        if keys is None:
            ib = [int(i) % self.counts["B"] for i in indices]
            pa = sample_params_batch(None, len(ia), ha, wa, p)
            pb = sample_params_batch(None, len(ia), hb, wb, p)
        else:  # one generator per item: the B tile, then A's and B's crop/flip/rotation
            for h, w in ((ha, wa), (hb, wb)):
                sample_params(None, h, w, p)  # validates the sizes
            highs = (self.counts["B"], ha - p + 1, wa - p + 1, 2, 4, hb - p + 1, wb - p + 1, 2, 4)
            draws = seeded_integers(keys, highs).tolist()
            ib = [d[0] for d in draws]
            pa = [PatchParams(d[1], d[2], bool(d[3]), d[4]) for d in draws]
            pb = [PatchParams(d[5], d[6], bool(d[7]), d[8]) for d in draws]
        self._fill_domain("A", ia, pa, out)
        self._fill_domain("B", ib, pb, out)


# Volume patches live in their own module; re-exported here so that every dataset comes from
# ``stainbench.data.datasets``.
from stainbench.data.volume_dataset import VolumePatchDataset  # noqa: E402

__all__ = ["PairedPatchDataset", "UnpairedPatchDataset", "VolumePatchDataset"]
