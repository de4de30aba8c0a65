"""The contract between a model family and the generic loop, plus the shared pieces.

A :class:`Task` owns its networks, optimizers and LR schedulers. The loop calls
``set_input(batch)`` then ``optimize()`` once per step; ``optimize`` runs the forward pass,
the backward passes and the optimizer and scheduler steps, and returns the step's losses as
Python floats. ``generator()`` is the A -> B network used for validation and export.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from stainbench.errors import ConfigError
from stainbench.models import create_model
from stainbench.training.recipe import NetworkSpec, Recipe


@dataclass(frozen=True)
class TaskContext:
    """What a task needs besides the recipe.

    ``in_channels``/``out_channels``: of the data (A, B); ``norm``: ``{"A", "B"}``
    ``Normalization`` of the training data; ``device``; ``rank``/``world_size`` of a
    distributed run (0/1 otherwise); ``value_max``: the raw data's maximum (255 for uint8).
    """

    in_channels: int
    out_channels: int
    norm: dict[str, Any]
    device: torch.device
    rank: int = 0
    world_size: int = 1
    value_max: float = 255.0


def linear_decay(steps: int, decay_steps: int) -> Callable[[int], float]:
    """LR factor per step: 1 for the first ``steps - decay_steps`` steps, then linearly to 0
    (the classic pix2pix/CycleGAN "linear" policy, per step instead of per epoch)."""
    start = steps - decay_steps

    def factor(step: int) -> float:
        if step < start or decay_steps == 0:
            return 1.0
        return max(0.0, 1.0 - (step - start + 1) / (decay_steps + 1))

    return factor


class Task:
    """Base class of the three families. Subclasses set ``family`` and build networks."""

    family: ClassVar[str]
    #: network name -> role; ``G_AB`` is always the A -> B generator
    networks: dict[str, nn.Module]

    def __init__(self, recipe: Recipe, ctx: TaskContext) -> None:
        self.recipe = recipe
        self.ctx = ctx
        self.loss_cfg = recipe.loss_config()
        self.networks = {}
        self.specs: dict[str, NetworkSpec] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self._fwd: dict[str, nn.Module] = {}
        self.memory_format = (
            torch.channels_last if recipe.train.channels_last else torch.contiguous_format
        )

    # -- construction helpers ------------------------------------------------------------------

    def add_network(
        self, name: str, spec: NetworkSpec, in_ch: int, out_ch: int | None
    ) -> nn.Module:
        """Create network ``name`` with channel counts filled in; check given ones."""
        kwargs = dict(spec.kwargs)
        wanted = {"in_channels": in_ch}
        if out_ch is not None:
            wanted["out_channels"] = out_ch
        key = "generator" if name.startswith("G") else "discriminator"
        for k, v in wanted.items():
            if k in kwargs and kwargs[k] != v:
                raise ConfigError(
                    f"{key}.kwargs.{k}: {kwargs[k]} does not match the data ({v}) for {name}"
                )
            kwargs[k] = v
        model = create_model(spec.arch, **kwargs).to(self.ctx.device)
        model = model.to(memory_format=self.memory_format)
        self.networks[name] = model
        self.specs[name] = NetworkSpec(spec.arch, kwargs)
        self._fwd[name] = model
        return model

    def add_optimizer(self, name: str, params: list[nn.Parameter]) -> None:
        """Adam(lr, (beta1, beta2)) with the constant-then-linear-decay schedule."""
        o = self.recipe.optim
        fused = o.fused
        if fused is None:
            fused = _fused_supported(self.ctx.device)
        opt = torch.optim.Adam(params, lr=o.lr, betas=(o.beta1, o.beta2), fused=fused or None)
        self.optimizers[name] = opt
        t = self.recipe.train
        self.schedulers[name] = torch.optim.lr_scheduler.LambdaLR(
            opt, linear_decay(t.steps, t.decay_steps)
        )

    def wrap_distributed(self) -> None:
        """Wrap every network in DistributedDataParallel (used for the training forwards)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        for name, net in self.networks.items():
            self._fwd[name] = DDP(net, device_ids=ids, broadcast_buffers=False)

    # -- the loop's contract -------------------------------------------------------------------

    def set_input(self, batch: dict[str, torch.Tensor]) -> None:
        """Move a batch ``{"A": (B, C, P, P), "B": ...}`` (normalized float32) to the device."""
        dev = self.ctx.device
        self.real_A = (
            batch["A"].to(dev, non_blocking=True).contiguous(memory_format=self.memory_format)
        )
        self.real_B = (
            batch["B"].to(dev, non_blocking=True).contiguous(memory_format=self.memory_format)
        )

    def optimize(self) -> dict[str, float]:
        """One optimisation step on the current input; returns the losses."""
        raise NotImplementedError

    def generator(self) -> nn.Module:
        """The A -> B generator (the raw module, not the distributed wrapper)."""
        return self.networks["G_AB"]

    def step_schedulers(self) -> None:
        for sched in self.schedulers.values():
            sched.step()

    def lr(self) -> float:
        return float(next(iter(self.optimizers.values())).param_groups[0]["lr"])

    # -- state ---------------------------------------------------------------------------------

    def extra_state(self) -> dict[str, Any]:
        """Family-specific resumable state (CycleGAN's image pools)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        del state

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {n: m.state_dict() for n, m in self.networks.items()}
        state["optim"] = {n: o.state_dict() for n, o in self.optimizers.items()}
        state["sched"] = {n: s.state_dict() for n, s in self.schedulers.items()}
        state["task"] = self.extra_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, net in self.networks.items():
            net.load_state_dict(state[name])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optim"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(state["sched"][name])
        self.load_extra_state(state.get("task", {}))

    # -- helpers for subclasses ----------------------------------------------------------------

    def fwd(self, name: str) -> nn.Module:
        """The module to call for a training forward (DDP wrapper when distributed)."""
        return self._fwd[name]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.recipe.train.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def frozen(*nets: nn.Module) -> Iterator[None]:
    """Temporarily stop gradients into ``nets``' parameters (a D while training G)."""
    flags = [[p.requires_grad for p in n.parameters()] for n in nets]
    for n in nets:
        for p in n.parameters():
            p.requires_grad_(False)
    try:
        yield
    finally:
        for n, fl in zip(nets, flags, strict=True):
            for p, f in zip(n.parameters(), fl, strict=True):
                p.requires_grad_(f)


def _fused_supported(device: torch.device) -> bool:
    try:
        p = torch.nn.Parameter(torch.zeros(1, device=device))
        p.grad = torch.zeros(1, device=device)
        torch.optim.Adam([p], fused=True).step()
    except (RuntimeError, TypeError):
        return False
    return True


class ImagePool:
    """History of generated images (Shrivastava et al. 2017), as in CycleGAN.

    ``query(images)`` returns a batch of the same shape: while the pool holds fewer than
    ``size`` images each new image is stored and returned; afterwards, with probability 1/2,
    a random stored image is returned and replaced by the new one, else the new one is
    returned. ``size=0`` disables the pool. Randomness comes from the given generator, so the
    pool is reproducible and resumable (:meth:`state_dict`).
    """

    def __init__(self, size: int, generator: torch.Generator, device: torch.device) -> None:
        self.size = size
        self.gen = generator
        self.device = device
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
                continue
            if torch.rand((), generator=self.gen).item() > 0.5:
                j = int(torch.randint(0, self.size, (), generator=self.gen))
                old = self.images[j]
                self.images[j] = img.clone()
                out.append(old)
            else:
                out.append(img)
        return torch.cat(out, 0)

    def state_dict(self) -> dict[str, Any]:
        return {"images": [t.cpu() for t in self.images], "rng": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.images = [t.to(self.device) for t in state["images"]]
        self.gen.set_state(state["rng"])
