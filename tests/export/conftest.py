"""Fixtures for the export tests: real tiny checkpoints written with the training API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from stainbench.data.transforms import Normalization
from stainbench.models import create_model, get_entry
from stainbench.training.checkpoint import save_checkpoint

#: Family -> generator architecture used by that family's default recipe.
FAMILY_ARCH = {"unet": "unet", "pix2pix": "unet", "cyclegan": "resnet"}


def normalization() -> dict[str, dict]:
    """A range normalization for A and a z-score one for B (distinct, so mistakes show)."""
    a = Normalization("range", "A", (127.5,) * 3, (127.5,) * 3)
    b = Normalization("zscore", "B", (170.0, 120.0, 160.0), (45.0, 60.0, 40.0))
    return {"A": a.to_dict(), "B": b.to_dict()}


def make_checkpoint(
    path: Path,
    family: str = "unet",
    run_name: str = "demo",
    arch: str | None = None,
    store: str = "",
    seed: int = 0,
    norm: dict[str, dict] | None = None,
) -> Path:
    """Write a real checkpoint of a tiny generator (registry's small configuration);
    ``norm``: its normalization dicts (default :func:`normalization`)."""
    import torch

    arch = arch or FAMILY_ARCH[family]
    kwargs = dict(get_entry(arch).small_kwargs)
    torch.manual_seed(seed)
    nets = {"G_AB": create_model(arch, **kwargs)}
    if family == "cyclegan":
        nets["G_BA"] = create_model(arch, **kwargs)
    payload = {
        "family": family,
        "run_name": run_name,
        "step": 10,
        "epoch": 1,
        "recipe": {"model": arch},
        "networks": {k: {"arch": arch, "kwargs": kwargs} for k in nets},
        "state": {k: v.state_dict() for k, v in nets.items()},
        "normalization": norm or normalization(),
        "data": {"store": store, "manifest_hash": "f" * 64 if not store else "from-store"},
    }
    return save_checkpoint(path, payload)


@pytest.fixture
def checkpoint_factory(tmp_path: Path) -> Callable[..., Path]:
    """``make(family="unet", run_name="demo", path=None, store="")`` writes a real checkpoint
    (default path ``tmp_path/runs/<run_name>/last.pt``) and returns its path."""

    def make(
        family: str = "unet", run_name: str = "demo", path: Path | None = None, **kw: object
    ) -> Path:
        path = path or tmp_path / "runs" / run_name / "last.pt"
        return make_checkpoint(path, family, run_name, **kw)  # type: ignore[arg-type]

    return make


@pytest.fixture
def norm_dicts() -> dict[str, dict]:
    """The checkpoint normalization used by :func:`make_checkpoint`."""
    return normalization()


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real paired demo store (32x32 tiles, 4 train + 4 val)."""
    from stainbench.data.demo import make_demo_store

    out = tmp_path_factory.mktemp("demo")
    return make_demo_store(out, tile=32, n_train=4, n_val=4).paired


@pytest.fixture
def small_profile(tmp_path: Path) -> Path:
    """An export profile for tiny tests: python flavour, 32 px warm-up and parity tiles."""
    p = tmp_path / "small.yaml"
    p.write_text("flavour: python\ntriton: {warmup_tile: 32}\nparity: {tile: 32, val_tiles: 2}\n")
    return p
