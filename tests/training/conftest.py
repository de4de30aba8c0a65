"""Fixtures for the training tests: a tiny real demo store (32 px tiles) and tiny recipes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TINY_NETS: dict[str, dict[str, Any]] = {
    "unet": {"generator": {"arch": "unet", "kwargs": {"depth": 3, "base_width": 4}}},
    "pix2pix": {
        "generator": {"arch": "unet", "kwargs": {"depth": 3, "base_width": 4, "dropout": 0.5}},
        "discriminator": {"arch": "patchgan", "kwargs": {"base_width": 4, "n_layers": 2}},
    },
    "cyclegan": {
        "generator": {"arch": "resnet", "kwargs": {"n_blocks": 1, "base_width": 4}},
        "discriminator": {"arch": "patchgan", "kwargs": {"base_width": 4, "n_layers": 2}},
        "loss": {"pool_size": 3},
    },
}


@pytest.fixture(scope="session")
def demo_stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``paired.zarr``, ``unpaired.zarr``, ``volume.zarr`` with 32x32 tiles (8 train, 4 val)."""
    from stainbench.data.demo import make_demo_store

    out = tmp_path_factory.mktemp("demo")
    make_demo_store(out, tile=32, n_train=8, n_val=4, seed=0)
    return out


def tiny_recipe(family: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """A recipe mapping for ``family`` with tiny networks; ``sections`` update its parts."""
    recipe: dict[str, Any] = {
        "family": family,
        "name": f"tiny_{family}",
        "data": {"patch_size": 16},
        # one thread: tiny tensors gain nothing from two, and a busy machine makes two slow
        "train": {"steps": 4, "batch_size": 2, "val_every": 2, "log_every": 1, "threads": 1},
    }
    for key, value in TINY_NETS[family].items():
        recipe[key] = dict(value)
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    return recipe


@pytest.fixture
def make_recipe() -> Callable[..., dict[str, Any]]:
    """The :func:`tiny_recipe` factory (conftest modules cannot be imported by tests)."""
    return tiny_recipe
