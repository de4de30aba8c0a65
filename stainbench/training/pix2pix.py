"""The Pix2Pix family (Isola et al. 2017): conditional GAN + L1.

``D`` judges ``cat(A, B)`` pairs (PatchGAN). Per step: D on real ``(A, B)`` -> 1 and on
``(A, G(A))`` -> 0, its loss halved; then G with ``GAN(D(A, G(A)) -> 1) + l1 * |G(A) - B|``.
"""

from __future__ import annotations

import torch

from stainbench.losses import gan_loss, l1_loss
from stainbench.training.recipe import Recipe
from stainbench.training.task import Task, TaskContext, frozen


class Pix2PixTask(Task):
    """UNet generator ``G_AB`` and conditional PatchGAN ``D``."""

    family = "pix2pix"

    def __init__(self, recipe: Recipe, ctx: TaskContext) -> None:
        super().__init__(recipe, ctx)
        assert recipe.generator is not None and recipe.discriminator is not None
        g = self.add_network("G_AB", recipe.generator, ctx.in_channels, ctx.out_channels)
        d = self.add_network("D", recipe.discriminator, ctx.in_channels + ctx.out_channels, None)
        self.add_optimizer("G", list(g.parameters()))
        self.add_optimizer("D", list(d.parameters()))

    def optimize(self) -> dict[str, float]:
        mode = self.loss_cfg.gan_mode
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]
        with self.autocast():
            fake = self.fwd("G_AB")(self.real_A)
            # discriminator step
            opt_d.zero_grad(set_to_none=True)
            d_fake = self.fwd("D")(torch.cat([self.real_A, fake.detach()], 1))
            d_real = self.fwd("D")(torch.cat([self.real_A, self.real_B], 1))
        loss_d = 0.5 * (
            gan_loss(d_fake.float(), False, mode) + gan_loss(d_real.float(), True, mode)
        )
        loss_d.backward()
        opt_d.step()
        # generator step (D frozen; the raw module, so no distributed hooks fire for D)
        opt_g.zero_grad(set_to_none=True)
        d = self.networks["D"]
        with frozen(d), self.autocast():
            pred = d(torch.cat([self.real_A, fake], 1))
        loss_gan = gan_loss(pred.float(), True, mode)
        loss_l1 = l1_loss(fake.float(), self.real_B)
        loss_g = loss_gan + self.loss_cfg.l1 * loss_l1
        loss_g.backward()
        opt_g.step()
        self.fake_B = fake.detach()
        return {
            "G_gan": loss_gan.item(),
            "G_l1": loss_l1.item(),
            "D_real": gan_loss(d_real.detach().float(), True, mode).item(),
            "D_fake": gan_loss(d_fake.detach().float(), False, mode).item(),
        }
