"""Bad inputs to training: each a one-line error naming the problem; nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from stainbench.errors import ConfigError, DataError, StainbenchError
from stainbench.training.checkpoint import load_checkpoint
from stainbench.training.loop import TrainingError, fit
from stainbench.training.recipe import load_recipe, recipe_from_dict


def _one_line(exc: pytest.ExceptionInfo[StainbenchError], *words: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for word in words:
        assert word in msg, msg


def test_missing_store(make_recipe: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    recipe = recipe_from_dict(make_recipe("unet"))
    with pytest.raises(DataError) as exc:
        fit(recipe, run_dir=tmp_path / "run", store=tmp_path / "nope.zarr", progress=False)
    _one_line(exc, "nope.zarr")
    with pytest.raises(ConfigError) as exc2:
        fit(recipe, run_dir=tmp_path / "run", progress=False)
    _one_line(exc2, "data.store")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_pix2pix_on_unpaired_store(
    demo_stores: Path, make_recipe: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    recipe = recipe_from_dict(make_recipe("pix2pix"))
    with pytest.raises(DataError) as exc:
        fit(recipe, run_dir=tmp_path, store=demo_stores / "unpaired.zarr", progress=False)
    _one_line(exc, "pix2pix", "unpaired", "cyclegan")
    with pytest.raises(ConfigError) as exc2:
        recipe_from_dict(make_recipe("pix2pix", data={"sampling": "unpaired"}))
    _one_line(exc2, "data.sampling", "paired")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"patch_size": 64}, ["64", "larger than the tiles"]),  # tiles are 32x32
        ({"patch_size": 12}, ["data.patch_size", "12", "multiple of 8"]),  # unet depth 3
        ({"val_size": 20}, ["data.val_size", "20", "8"]),
    ],
)
def test_patch_sizes(
    data: dict[str, Any],
    words: list[str],
    demo_stores: Path,
    make_recipe: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    recipe = recipe_from_dict(make_recipe("unet", data=data))
    with pytest.raises(StainbenchError) as exc:
        fit(recipe, run_dir=tmp_path, store=demo_stores / "paired.zarr", progress=False)
    _one_line(exc, *words)


@pytest.mark.parametrize(
    ("patch", "words"),
    [
        ({"train": {"stepz": 3}}, ["train.stepz", "unknown key"]),
        ({"loss": {"cycel": 3}}, ["loss.cycel", "unknown key", "cycle"]),
        ({"train": {"steps": "many"}}, ["train.steps", "integer"]),
        ({"generator": {"arch": "unet_9000"}}, ["generator.arch", "unet_9000", "resnet"]),
        ({"discriminator": {"arch": "unet"}}, ["discriminator.arch", "generator"]),
        ({"family": "stylegan"}, ["family", "stylegan"]),
        ({"train": {"decay_steps": 99}}, ["train.decay_steps"]),
    ],
)
def test_bad_recipes_name_the_key(patch: dict[str, Any], words: list[str], tmp_path: Path) -> None:
    data: dict[str, Any] = {"family": "cyclegan", "train": {"steps": 5}}
    for key, value in patch.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        load_recipe(path)
    _one_line(exc, "bad.yaml", *words)


def test_generator_kwargs_that_do_not_fit_the_data(
    demo_stores: Path, make_recipe: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    recipe = make_recipe("unet")
    recipe["generator"]["kwargs"] = {**recipe["generator"]["kwargs"], "in_channels": 4}
    with pytest.raises(ConfigError) as exc:
        fit(
            recipe_from_dict(recipe),
            run_dir=tmp_path,
            store=demo_stores / "paired.zarr",
            progress=False,
        )
    _one_line(exc, "generator.kwargs.in_channels", "4", "3")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    demo_stores: Path, make_recipe: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    """An absurd learning rate blows the weights up: the run stops with one line and the
    checkpoint of the last finite step stays on disk."""
    recipe = recipe_from_dict(
        make_recipe(
            "unet",
            optim={"lr": 1e35},
            train={"steps": 8, "checkpoint_every": 1, "val_every": 0},
            loss={"kld": 0.0},
        )
    )
    with pytest.raises(TrainingError) as exc:
        fit(recipe, run_dir=tmp_path, store=demo_stores / "paired.zarr", progress=False)
    msg = str(exc.value)
    _one_line(exc, "loss", "last good checkpoint", "optim.lr")
    kept = load_checkpoint(tmp_path / "last.pt")
    assert f"(step {kept['step']})" in msg
    for tensor in kept["state"]["G_AB"].values():
        assert bool(tensor.float().isfinite().all())


def test_cli_unknown_key_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"family": "unet", "trian": {"steps": 1}}))
    proc = subprocess.run(
        [sys.executable, "-m", "stainbench", "train", str(path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "trian: unknown key" in lines[0], proc.stderr
