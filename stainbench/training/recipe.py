"""Typed training recipes (``train/*.yaml``), validated on load.

A recipe names the family, the data, the networks (registry names and keyword arguments),
the loss weights of the family, the optimizer and the schedule. Every key is checked: a wrong
key or value is a one-line :class:`~stainbench.errors.ConfigError` naming the dotted key,
e.g. ``loss.cycel: unknown key (valid keys: cycle, gan_mode, identity, pool_size)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from stainbench.config import apply_overrides, from_dict, load_yaml, to_dict
from stainbench.errors import ConfigError

Family = Literal["unet", "pix2pix", "cyclegan"]
GanMode = Literal["lsgan", "vanilla"]


@dataclass(frozen=True)
class NetworkSpec:
    """A registered architecture (``stainbench.models.list_models()``) and its kwargs.

    ``in_channels``/``out_channels`` are filled in from the data when absent.
    """

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VolumeConfig:
    """How volume stores are sampled: ``2d`` single z-slices, or ``2.5d`` stacks of
    ``context`` neighbouring slices (odd) given to the network as input channels; the
    target is the centre slice."""

    mode: Literal["2d", "2.5d"] = "2d"
    context: int = 3


@dataclass(frozen=True)
class DataConfig:
    """Where the tiles come from and how they are turned into training patches.

    ``store``: a store written by ``stainbench data ingest``/``demo`` (``--data`` overrides
    it). ``patch_size``: square random crops in pixels, a multiple of the generator's
    ``size_multiple``. ``normalization``: ``range``/``zscore``/``percentile`` (see
    ``stainbench.data.transforms``). ``sampling``: ``paired`` (aligned A/B crops, needs a
    paired store), ``unpaired`` (independent A and B), ``auto`` (paired for unet/pix2pix,
    unpaired for cyclegan). ``val_size``: side of the centred validation crop (None: whole
    tiles). ``val_tiles``: how many validation tiles to score (0: all).
    """

    store: Path | None = None
    patch_size: int = 256
    normalization: Literal["range", "zscore", "percentile"] = "range"
    sampling: Literal["auto", "paired", "unpaired"] = "auto"
    augment: bool = True
    workers: int = 0
    val_size: int | None = None
    val_tiles: int = 0
    volume: VolumeConfig = field(default_factory=VolumeConfig)


@dataclass(frozen=True)
class SupervisedLoss:
    """Supervised UNet: ``mse * weighted_MSE + kld * KLD`` (see ``stainbench.losses``)."""

    mse: float = 1.0
    kld: float = 0.1
    weight_map: Literal["od", "none"] = "od"
    od_ref: float = 0.3
    background_weight: float = 0.1
    kld_bins: int = 32
    kld_range: tuple[float, float] = (-1.0, 1.0)


@dataclass(frozen=True)
class Pix2PixLoss:
    """Pix2Pix: ``GAN(D(A, G(A))) + l1 * |G(A) - B|``; the discriminator loss is halved."""

    gan_mode: GanMode = "vanilla"
    l1: float = 100.0


@dataclass(frozen=True)
class CycleGANLoss:
    """CycleGAN: LSGAN + ``cycle`` * cycle L1 + ``cycle * identity`` * identity L1; the
    discriminators see generated images through a history pool of ``pool_size``."""

    gan_mode: GanMode = "lsgan"
    cycle: float = 10.0
    identity: float = 0.5
    pool_size: int = 50


LOSSES: dict[str, type] = {
    "unet": SupervisedLoss,
    "pix2pix": Pix2PixLoss,
    "cyclegan": CycleGANLoss,
}


@dataclass(frozen=True)
class OptimConfig:
    """Adam for every network. ``fused``: the single-kernel Adam (much faster on CPU than
    the per-tensor default); ``None``: on wherever torch supports it."""

    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    fused: bool | None = None


@dataclass(frozen=True)
class TrainConfig:
    """The schedule. ``steps``: optimisation steps (one batch each); the learning rate is
    constant, then decays linearly to 0 over the last ``decay_steps``. ``val_every``:
    validate (and write ``best.pt`` when ``best_metric`` improves) every N steps and at the
    end (0: only at the end). ``checkpoint_every``: write ``last.pt`` every N steps (0: at
    each validation). ``threads``: torch intra-op threads (None: torch's default)."""

    steps: int = 1000
    decay_steps: int = 0
    batch_size: int = 1
    seed: int = 0
    val_every: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    best_metric: Literal["ssim", "psnr", "mae"] = "ssim"
    channels_last: bool = False
    bf16: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None


@dataclass(frozen=True)
class Recipe:
    """One training run: family, data, networks, loss weights, optimizer, schedule.

    ``generator`` defaults to ``unet`` (unet, pix2pix) or ``resnet`` (cyclegan) with the
    architecture's defaults; ``discriminator`` to ``patchgan`` for the GAN families.
    """

    family: Family
    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    generator: NetworkSpec | None = None
    discriminator: NetworkSpec | None = None
    loss: dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def loss_config(self) -> Any:
        """The family's typed loss section (validated)."""
        return from_dict(LOSSES[self.family], self.loss, "loss")


def _validate(recipe: Recipe) -> Recipe:
    from stainbench.models import get_entry  # registry import is light, models load lazily

    loss = recipe.loss_config()
    if recipe.generator is None:
        default = "resnet" if recipe.family == "cyclegan" else "unet"
        recipe = replace(
            recipe, generator=NetworkSpec(default)
        )  # validates keys/types of the family's loss section
    for key, spec in (("generator", recipe.generator), ("discriminator", recipe.discriminator)):
        if spec is None:
            continue
        try:
            entry = get_entry(spec.arch)
        except Exception as exc:
            raise ConfigError(f"{key}.arch: {exc}") from None
        want = "generator" if key == "generator" else "discriminator"
        if entry.role != want:
            raise ConfigError(f"{key}.arch: {spec.arch!r} is a {entry.role}, not a {want}")
    if recipe.family == "unet" and recipe.discriminator is not None:
        raise ConfigError("discriminator: the supervised unet family has no discriminator")
    if recipe.family != "unet" and recipe.discriminator is None:
        recipe = replace(recipe, discriminator=NetworkSpec("patchgan"))
    t = recipe.train
    checks = [
        ("train.steps", t.steps >= 1, "must be >= 1"),
        (
            "train.decay_steps",
            0 <= t.decay_steps <= t.steps,
            f"must be in [0, train.steps = {t.steps}]; with fewer steps, set it too "
            f"(e.g. --set train.decay_steps={t.steps // 2}: the classic schedule decays over "
            "the second half)",
        ),
        ("train.batch_size", t.batch_size >= 1, "must be >= 1"),
        ("train.val_every", t.val_every >= 0, "must be >= 0"),
        ("train.log_every", t.log_every >= 1, "must be >= 1"),
        ("train.checkpoint_every", t.checkpoint_every >= 0, "must be >= 0"),
        ("train.threads", t.threads is None or t.threads >= 1, "must be >= 1"),
        ("optim.lr", recipe.optim.lr > 0, "must be > 0"),
        ("data.patch_size", recipe.data.patch_size >= 1, "must be >= 1"),
        ("data.workers", recipe.data.workers >= 0, "must be >= 0"),
        ("data.val_tiles", recipe.data.val_tiles >= 0, "must be >= 0"),
        (
            "data.volume.context",
            recipe.data.volume.context >= 1 and recipe.data.volume.context % 2 == 1,
            "must be odd and >= 1",
        ),
    ]
    if recipe.family == "cyclegan":
        checks.append(("loss.pool_size", loss.pool_size >= 0, "must be >= 0"))
    if recipe.family == "pix2pix" and recipe.data.sampling == "unpaired":
        checks.append(("data.sampling", False, "pix2pix needs paired sampling"))
    for key, ok, what in checks:
        if not ok:
            raise ConfigError(f"{key}: {what}")
    return recipe


def recipe_from_dict(data: dict[str, Any], where: str = "") -> Recipe:
    """Validate a recipe mapping (``where`` prefixes error messages, e.g. the file name)."""
    try:
        return _validate(from_dict(Recipe, data))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read ``path`` (YAML), apply ``--set key=value`` overrides, validate."""
    data = apply_overrides(load_yaml(path), overrides)
    recipe = recipe_from_dict(data, where=str(path))
    if not recipe.name:
        recipe = replace(recipe, name=Path(path).stem)
    return recipe


def resolved(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data with every default filled in (the loss section included)."""
    out = to_dict(recipe)
    out["loss"] = to_dict(recipe.loss_config())
    return out


#: Recipe keys a resumed run may change: how long it trains (the LR schedule follows the new
#: ``train.steps``/``train.decay_steps``), how often it logs, validates and saves, and where
#: and how fast it runs. Every other key changes what a step computes, or the meaning of the
#: step counter (``train.batch_size``), so a resume refuses it. ``data.store`` may name
#: another path to the same data (the loop checks the store's manifest hash); ``name`` is
#: the run's, kept from the checkpoint.
RESUMABLE_KEYS: tuple[str, ...] = (
    "name",
    "data.store",
    "data.workers",
    "train.steps",
    "train.decay_steps",
    "train.val_every",
    "train.log_every",
    "train.checkpoint_every",
    "train.threads",
    "train.device",
)

_UNSET = "<unset>"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"dotted.key": value}`` (tuples become lists)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = to_dict(value)
    return out


def recipe_changes(saved: Mapping[str, Any], recipe: Recipe) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved value, new value)}`` for every value of ``recipe`` that differs
    from ``saved`` (a checkpoint's resolved recipe). Keys the saved recipe predates count as
    their defaults; keys of a removed schema show as ``<unset>`` on the new side."""
    try:
        old = flatten(resolved(_validate(from_dict(Recipe, dict(saved)))))
    except ConfigError:  # a recipe of another stainbench: compare the raw values
        old = flatten(saved)
    new = flatten(resolved(recipe))
    return {
        key: (old.get(key, _UNSET), new.get(key, _UNSET))
        for key in list(dict.fromkeys([*old, *new]))
        if old.get(key, _UNSET) != new.get(key, _UNSET)
    }
