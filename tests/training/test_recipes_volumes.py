"""The shipped recipes validate; the families train on volume stores (2D and 2.5D)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stainbench.training.checkpoint import load_checkpoint, load_generator
from stainbench.training.loop import fit
from stainbench.training.recipe import load_recipe, recipe_from_dict, resolved

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "train").rglob("*.yaml"))


def test_recipes_exist() -> None:
    names = {str(p.relative_to(REPO / "train")) for p in RECIPES}
    assert {"unet.yaml", "pix2pix.yaml", "cyclegan.yaml"} <= names
    assert {"demo/unet.yaml", "demo/pix2pix.yaml", "demo/cyclegan.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "train")))
def test_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.family in path.stem or recipe.family in path.read_text()
    data = resolved(recipe)
    assert data["generator"]["arch"] in ("unet", "resnet")
    if path.parent.name == "demo":
        assert str(recipe.data.store).startswith("demo_out/data/")
    else:  # the full-size recipes use the classic widths on 256x256 patches
        assert recipe.data.patch_size == 256
        assert recipe.generator is not None and recipe.generator.kwargs["base_width"] == 64


@pytest.mark.parametrize(("family", "mode"), [("unet", "2.5d"), ("pix2pix", "2d")])
def test_volume_training(
    family: str,
    mode: str,
    demo_stores: Path,
    make_recipe: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    data = {"patch_size": 32, "volume": {"mode": mode, "context": 3}, "val_tiles": 4}
    recipe = recipe_from_dict(make_recipe(family, data=data, train={"steps": 2}))
    result = fit(recipe, run_dir=tmp_path, store=demo_stores / "volume.zarr", progress=False)
    assert result.step == 2 and set(result.val) == {"ssim", "psnr", "mae"}
    assert set(result.identity) == {"ssim", "psnr", "mae"}
    _, info = load_generator(tmp_path / "best.pt")
    assert info.in_channels == (9 if mode == "2.5d" else 3) and info.out_channels == 3
    payload = load_checkpoint(tmp_path / "last.pt")
    assert payload["recipe"]["data"]["volume"]["mode"] == mode
