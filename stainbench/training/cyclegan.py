"""The CycleGAN family (Zhu et al. 2017).

Two generators ``G_AB`` (A -> B) and ``G_BA``, two PatchGANs ``D_A`` (judges A images) and
``D_B``. Generator loss: ``GAN(D_B(G_AB(A))) + GAN(D_A(G_BA(B)))`` (least squares by default)
``+ cycle * (|G_BA(G_AB(A)) - A| + |G_AB(G_BA(B)) - B|)``
``+ cycle * identity * (|G_AB(B) - B| + |G_BA(A) - A|)``. Each discriminator's loss is halved
and sees generated images through a history pool of ``pool_size`` images.
"""

from __future__ import annotations

from typing import Any

import torch

from stainbench.errors import ConfigError
from stainbench.losses import gan_loss, l1_loss
from stainbench.training.recipe import Recipe
from stainbench.training.task import ImagePool, Task, TaskContext, frozen


class CycleGANTask(Task):
    """``G_AB``, ``G_BA``, ``D_A``, ``D_B``; optimizers ``G`` (both generators) and ``D``."""

    family = "cyclegan"

    def __init__(self, recipe: Recipe, ctx: TaskContext) -> None:
        super().__init__(recipe, ctx)
        assert recipe.generator is not None and recipe.discriminator is not None
        cin, cout = ctx.in_channels, ctx.out_channels
        if self.loss_cfg.identity > 0 and cin != cout:
            raise ConfigError(
                f"loss.identity: needs as many A as B channels ({cin} vs {cout}); set it to 0"
            )
        g_ab = self.add_network("G_AB", recipe.generator, cin, cout)
        g_ba = self.add_network("G_BA", recipe.generator, cout, cin)
        d_a = self.add_network("D_A", recipe.discriminator, cin, None)
        d_b = self.add_network("D_B", recipe.discriminator, cout, None)
        self.add_optimizer("G", [*g_ab.parameters(), *g_ba.parameters()])
        self.add_optimizer("D", [*d_a.parameters(), *d_b.parameters()])
        seed = recipe.train.seed * 1000 + 17 + ctx.rank
        size = self.loss_cfg.pool_size
        self.pools = {
            "A": ImagePool(size, torch.Generator().manual_seed(seed), ctx.device),
            "B": ImagePool(size, torch.Generator().manual_seed(seed + 1), ctx.device),
        }

    def optimize(self) -> dict[str, float]:
        cfg = self.loss_cfg
        mode = cfg.gan_mode
        real_a, real_b = self.real_A, self.real_B
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]
        d_a, d_b = self.networks["D_A"], self.networks["D_B"]
        # generators
        opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            fake_b = self.fwd("G_AB")(real_a)
            rec_a = self.fwd("G_BA")(fake_b)
            fake_a = self.fwd("G_BA")(real_b)
            rec_b = self.fwd("G_AB")(fake_a)
            with frozen(d_a, d_b):
                adv_ab = gan_loss(d_b(fake_b).float(), True, mode)
                adv_ba = gan_loss(d_a(fake_a).float(), True, mode)
            idt_loss = torch.zeros((), device=real_a.device)
            if cfg.identity > 0:
                idt_b = self.fwd("G_AB")(real_b)
                idt_a = self.fwd("G_BA")(real_a)
                idt_loss = l1_loss(idt_b.float(), real_b) + l1_loss(idt_a.float(), real_a)
        cyc = l1_loss(rec_a.float(), real_a) + l1_loss(rec_b.float(), real_b)
        loss_g = adv_ab + adv_ba + cfg.cycle * cyc + cfg.cycle * cfg.identity * idt_loss
        loss_g.backward()
        opt_g.step()
        # discriminators, on pooled fakes
        opt_d.zero_grad(set_to_none=True)
        pool_b = self.pools["B"].query(fake_b.detach())
        pool_a = self.pools["A"].query(fake_a.detach())
        with self.autocast():
            ld_b = 0.5 * (
                gan_loss(self.fwd("D_B")(real_b).float(), True, mode)
                + gan_loss(self.fwd("D_B")(pool_b).float(), False, mode)
            )
            ld_a = 0.5 * (
                gan_loss(self.fwd("D_A")(real_a).float(), True, mode)
                + gan_loss(self.fwd("D_A")(pool_a).float(), False, mode)
            )
        (ld_a + ld_b).backward()
        opt_d.step()
        self.fake_B = fake_b.detach()
        return {
            "G_AB": adv_ab.item(),
            "G_BA": adv_ba.item(),
            "cycle": cyc.item(),
            "idt": idt_loss.item(),
            "D_A": ld_a.item(),
            "D_B": ld_b.item(),
        }

    def extra_state(self) -> dict[str, Any]:
        return {"pools": {k: p.state_dict() for k, p in self.pools.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for k, p in self.pools.items():
            p.load_state_dict(state["pools"][k])
