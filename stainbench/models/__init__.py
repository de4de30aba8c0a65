"""Model architectures, chosen by name: ``create_model("unet", depth=8, base_width=64)``.

Registered: ``unet`` (UNet generator), ``resnet`` (CycleGAN's ResNet generator),
``patchgan`` (PatchGAN discriminator). See :mod:`stainbench.models.registry`.
"""

from stainbench.models.registry import create_model, get_entry, list_models, register_model

__all__ = ["create_model", "get_entry", "list_models", "register_model"]
