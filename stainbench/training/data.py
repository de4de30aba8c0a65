"""From a recipe and a store to training and validation datasets, with the checks.

A paired store serves every family (CycleGAN samples it unpaired by default); an unpaired
store serves CycleGAN only; a volume store serves every family through volume patches. Patch
and validation sizes must fit the tiles and be multiples of the generator's ``size_multiple``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from stainbench.data.transforms import normalize_batch
from stainbench.errors import ConfigError, DataError
from stainbench.training.recipe import Recipe


@dataclass
class ValTiles:
    """Validation tiles held in memory, raw: ``A``, ``B`` ``(N, S, S, C)`` uint8/uint16.

    Centre crops of side S (``data.val_size``, default the largest multiple of the
    generator's ``size_multiple`` that fits the tiles), the first ``data.val_tiles`` tiles.
    ``X``: the normalized network inputs ``(N, C_in, S, S)`` float32 when they are not simply
    A normalized (2.5D volume stacks); ``A`` is then the centre slice (the identity baseline).
    """

    A: np.ndarray
    B: np.ndarray
    X: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.A.shape[0])


@dataclass
class TrainingData:
    """The datasets of one run.

    ``train``: items ``{"A": (C_A, P, P), "B": (C_B, P, P)}`` raw (uint8/uint16) with their
    ``"A_norm"``/``"B_norm"`` ``(2, C)`` parameters; the loop normalizes each batch with
    :func:`~stainbench.data.transforms.normalize_batch` (bit-identical to float32 items); ``val``:
    paired whole (or centre-cropped) validation tiles with the training normalization, or
    None when the store has no paired validation split; ``norm``: ``{"A", "B"}``
    ``Normalization``; ``value_max``: the raw data's maximum (255 for uint8).
    """

    store: Path
    kind: str
    manifest_hash: str
    train: Dataset
    val: ValTiles | None
    norm: dict[str, Any]
    in_channels: int
    out_channels: int
    value_max: float
    tile_hw: tuple[int, int]


def sampling_for(recipe: Recipe, kind: str) -> str:
    """``paired`` or ``unpaired`` for this family and store kind (``data.sampling: auto``)."""
    sampling = recipe.data.sampling
    if sampling == "auto":
        sampling = "unpaired" if recipe.family == "cyclegan" else "paired"
    if sampling == "paired" and kind == "unpaired":
        raise DataError(
            f"the {recipe.family} family needs aligned A/B pairs but the store is unpaired; "
            "use the cyclegan family or a paired store"
        )
    return sampling


def open_training_data(recipe: Recipe, store: Path, size_multiple: int) -> TrainingData:
    """Open ``store`` and build the datasets the recipe asks for (see module docstring)."""
    from stainbench.data.info import store_problems
    from stainbench.data.store import open_store

    opened = open_store(store)
    problems = store_problems(store)  # a missing chunk file would read back as black tiles
    if problems:
        more = ""
        if len(problems) > 1:
            more = f" (and {len(problems) - 1} more: stainbench data info {store})"
        raise DataError(f"{store}: damaged store: {problems[0]}{more}")
    kind = opened.kind
    if "train" not in opened.splits:
        raise DataError(f"{store}: has no 'train' split (has {', '.join(opened.splits)})")
    missing = [d for d in ("A", "B") if d not in opened.domains("train")]
    if missing:  # every family learns A -> B from examples of both
        raise DataError(
            f"{store}: its train split has no domain {' or '.join(missing)}; training needs "
            "source (A) and target (B) images: ingest a folder with A/ and B/"
        )
    d = recipe.data
    if d.patch_size % size_multiple:
        raise ConfigError(
            f"data.patch_size: {d.patch_size} is not a multiple of {size_multiple}, which "
            f"the generator ({recipe.generator.arch if recipe.generator else '?'}) requires"
        )
    if kind == "volume":
        return _volume_data(recipe, opened, size_multiple)
    sampling = sampling_for(recipe, kind)
    from stainbench.data.datasets import PairedPatchDataset, UnpairedPatchDataset

    cls = PairedPatchDataset if sampling == "paired" else UnpairedPatchDataset
    train = cls(
        opened, "train", d.patch_size, d.normalization, augment=d.augment, seed=recipe.train.seed
    )
    arr = opened.array("train", "A")
    tile_hw = (int(arr.shape[1]), int(arr.shape[2]))
    value_max = float(np.iinfo(arr.dtype).max)
    val = None
    if kind == "paired" and "val" in opened.splits:
        vhw = tuple(int(s) for s in opened.array("val", "A").shape[1:3])
        size = d.val_size or min(vhw)
        size -= size % size_multiple if d.val_size is None else 0
        if size % size_multiple or size < size_multiple:
            raise ConfigError(
                f"data.val_size: {d.val_size or min(vhw)} is not a positive multiple of "
                f"{size_multiple}, which the generator requires"
            )
        val = read_val_tiles(opened, size, d.val_tiles)
    sample = train[0]
    return TrainingData(
        store=Path(store),
        kind=kind,
        manifest_hash=opened.manifest_hash,
        train=train,
        val=val,
        norm=dict(train.normalization),
        in_channels=int(sample["A"].shape[0]),
        out_channels=int(sample["B"].shape[0]),
        value_max=value_max,
        tile_hw=tile_hw,
    )


def read_val_tiles(opened: Any, size: int, max_tiles: int) -> ValTiles:
    """Centre crops of side ``size`` of the first ``max_tiles`` (0: all) paired val tiles."""
    arrays = [opened.array("val", d) for d in ("A", "B")]
    n = int(arrays[0].shape[0]) if max_tiles <= 0 else min(max_tiles, int(arrays[0].shape[0]))
    h, w = int(arrays[0].shape[1]), int(arrays[0].shape[2])
    if size > h or size > w:
        raise ConfigError(f"data.val_size: {size} is larger than the validation tiles ({h}x{w})")
    y, x = (h - size) // 2, (w - size) // 2
    a, b = (np.asarray(arr[:n, y : y + size, x : x + size, :]) for arr in arrays)
    return ValTiles(a, b)


def _volume_data(recipe: Recipe, opened: Any, size_multiple: int) -> TrainingData:
    """Volume stores: 2D slices or 2.5D stacks (``data.volume``) as training patches; the
    validation split's grid patches (centre slice targets) for scoring."""
    from stainbench.data.datasets import VolumePatchDataset

    d = recipe.data
    depth = d.volume.context
    train = VolumePatchDataset(
        opened,
        "train",
        d.patch_size,
        mode=d.volume.mode,
        depth=depth,
        normalization=d.normalization,
        augment=d.augment,
        seed=recipe.train.seed,
    )
    norm = dict(train.normalization)
    arr = opened.volume_array(opened.volumes("train")[0].name, "A")
    value_max = float(np.iinfo(arr.dtype).max)
    val = None
    if "val" in opened.splits:
        size = d.val_size or d.patch_size
        if size % size_multiple:
            raise ConfigError(
                f"data.val_size: {size} is not a multiple of {size_multiple}, which the "
                "generator requires"
            )
        vds = VolumePatchDataset(
            opened,
            "val",
            size,
            mode=d.volume.mode,
            depth=depth,
            normalization=norm,
            augment=False,
        )
        n = len(vds) if d.val_tiles <= 0 else min(d.val_tiles, len(vds))
        batch = default_collate([vds[i] for i in range(n)])
        x, b = batch["A"], batch["B"]  # raw (N, C_in, S, S), (N, C, S, S)
        c = b.shape[1]
        centre = x[:, (x.shape[1] // c // 2) * c :][:, :c]
        val = ValTiles(A=_nhwc(centre), B=_nhwc(b), X=normalize_batch(batch)["A"])
    sample = train[0]
    return TrainingData(
        store=Path(opened.path),
        kind="volume",
        manifest_hash=opened.manifest_hash,
        train=train,
        val=val,
        norm=norm,
        in_channels=int(sample["A"].shape[0]),
        out_channels=int(sample["B"].shape[0]),
        value_max=value_max,
        tile_hw=(int(arr.shape[1]), int(arr.shape[2])),
    )


def _nhwc(x: torch.Tensor) -> np.ndarray:
    """Raw ``(N, C, H, W)`` integer patches as a contiguous ``(N, H, W, C)`` array."""
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


class EpochIndexed(Dataset):
    """Wraps a dataset with ``set_epoch`` so that items are addressed by ``(epoch, index)``
    (works in DataLoader worker processes, whose dataset copies never see ``set_epoch``).

    Over a dataset that fills whole batches (the tile datasets) it does so too, for
    :class:`~stainbench.data.loader.PatchLoader`: ``fill_batch`` takes ``(epoch, index)``
    keys."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def fills_batches(self) -> bool:
        return bool(getattr(self.dataset, "fills_batches", False))

    def batch_layout(self, n: int) -> dict[str, Any]:
        """The wrapped dataset's batch layout for ``n`` items."""
        return self.dataset.batch_layout(n)  # type: ignore[attr-defined]

    def fill_batch(self, keys: list[tuple[int, int]], out: dict[str, np.ndarray]) -> None:
        """Write the items ``keys`` (``(epoch, index)``) as one batch into ``out``; runs of keys
        of one epoch go to the dataset's ``fill_batch`` together."""
        for start, stop, indices in self._runs(keys):
            self.dataset.fill_batch(  # type: ignore[attr-defined]
                indices, {k: v[start:stop] for k, v in out.items()}
            )

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The dataset's (raw) item ``index`` of ``epoch``."""
        epoch, index = key
        if getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        return self.dataset[index]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """The items of one batch; runs of keys of one epoch go to the dataset's own batched
        ``__getitems__`` where it has one (tile datasets read a batch's tiles together)."""
        batched = getattr(self.dataset, "__getitems__", None)
        if batched is None:
            return [self[key] for key in keys]
        out: list[dict[str, torch.Tensor]] = []
        for _, _, indices in self._runs(keys):
            out += batched(indices)
        return out

    def _runs(self, keys: list[tuple[int, int]]) -> Iterator[tuple[int, int, list[int]]]:
        """``(start, stop, indices)`` of each run of consecutive keys of one epoch, with the
        dataset set to that epoch before the run is yielded."""
        start = 0
        for epoch, run in itertools.groupby(keys, key=lambda key: key[0]):
            indices = [index for _, index in run]
            if getattr(self.dataset, "epoch", None) != epoch:
                self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
            yield start, start + len(indices), indices
            start += len(indices)


def train_loader(
    train: Dataset, sampler: StepBatches, workers: int, device: torch.device, seed: int
) -> Iterable[dict[str, torch.Tensor]]:
    """The training batches of ``sampler``'s steps, for ``normalize_batch(batch, device)``.

    On the CPU, for the tile datasets: a :class:`~stainbench.data.loader.PatchLoader`, whose
    batches come normalized already (float32, built in place; in ``workers`` processes
    through a persistent shared-memory ring); ``normalize_batch`` passes them through. Else
    (volume datasets, a GPU): ``DataLoader`` with raw batches, which ``normalize_batch``
    normalizes on the device (4x fewer bytes to move than float32). Both give the same
    numbers. ``seed`` seeds the loader's own generator (the global RNG is never consumed, so a
    resumed run's dropout matches an uninterrupted one). Close it (``close()``) when done.
    """
    from stainbench.data.loader import PatchLoader, fills_batches

    dataset = EpochIndexed(train)
    generator = torch.Generator().manual_seed(seed)
    if device.type == "cpu" and fills_batches(dataset):
        return PatchLoader(
            dataset, sampler.batch, batch_sampler=sampler, num_workers=workers, generator=generator
        )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
        generator=generator,
    )


class StepBatches:
    """Batches of ``(epoch, index)`` keys for steps ``start, start+1, ...`` of one rank.

    The global sample stream is the concatenation of per-epoch permutations
    (``torch.randperm(n)`` seeded with ``(seed, epoch)``). Step ``s`` consumes global positions
    ``[s*B*W, (s+1)*B*W)``; rank ``r`` takes ``[s*B*W + r*B, s*B*W + (r+1)*B)``. Every
    rank thus sees different samples, and a resumed run continues exactly where it stopped.
    """

    def __init__(
        self, n: int, batch: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1
    ) -> None:
        self.n, self.batch, self.seed = n, batch, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self._perms: dict[int, torch.Tensor] = {}

    def epoch_of(self, step: int) -> int:
        return (step * self.batch * self.world) // self.n

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=gen)}
        return self._perms[epoch]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            first = step * self.batch * self.world + self.rank * self.batch
            keys = []
            for pos in range(first, first + self.batch):
                epoch, i = divmod(pos, self.n)
                keys.append((epoch, int(self._perm(epoch)[i])))
            yield keys
