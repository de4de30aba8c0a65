"""The supervised UNet family: ``loss = mse * weighted_MSE(G(A), B) + kld * KLD(G(A), B)``.

The per-pixel weight comes from the target's optical density (``loss.weight_map: od``) or is
uniform (``none``); see :mod:`stainbench.losses` for both formulas and the reasons.
"""

from __future__ import annotations

import torch

from stainbench.losses import histogram_kld, od_weight_map, weighted_mse
from stainbench.training.recipe import Recipe
from stainbench.training.task import Task, TaskContext


class SupervisedTask(Task):
    """One UNet generator ``G_AB`` trained with weighted MSE + lambda * KLD."""

    family = "unet"

    def __init__(self, recipe: Recipe, ctx: TaskContext) -> None:
        super().__init__(recipe, ctx)
        assert recipe.generator is not None
        g = self.add_network("G_AB", recipe.generator, ctx.in_channels, ctx.out_channels)
        self.add_optimizer("G", list(g.parameters()))
        norm_b = ctx.norm["B"]
        shape = (1, len(norm_b.offset), 1, 1)
        self._b_offset = torch.tensor(norm_b.offset, device=ctx.device).view(shape)
        self._b_scale = torch.tensor(norm_b.scale, device=ctx.device).view(shape)
        self._b_max = ctx.value_max

    def _weights(self, target: torch.Tensor) -> torch.Tensor:
        cfg = self.loss_cfg
        if cfg.weight_map == "none":
            return torch.ones_like(target[:, :1])
        # back to transmitted intensity in [0, 1] (raw units / the dtype's maximum)
        raw = target * self._b_scale + self._b_offset
        return od_weight_map(raw / self._b_max, cfg.od_ref, cfg.background_weight)

    def optimize(self) -> dict[str, float]:
        cfg = self.loss_cfg
        opt = self.optimizers["G"]
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            fake = self.fwd("G_AB")(self.real_A)
        fake = fake.float()
        mse = weighted_mse(fake, self.real_B, self._weights(self.real_B))
        loss = cfg.mse * mse
        kld = torch.zeros((), device=fake.device)
        if cfg.kld > 0:
            lo, hi = cfg.kld_range
            kld = histogram_kld(fake, self.real_B, cfg.kld_bins, lo, hi)
            loss = loss + cfg.kld * kld
        loss.backward()
        opt.step()
        self.fake_B = fake.detach()
        return {"loss": loss.item(), "mse_w": mse.item(), "kld": kld.item()}
