"""An interrupted-then-resumed run ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from stainbench.errors import ModelError
from stainbench.training.checkpoint import load_checkpoint
from stainbench.training.loop import TrainingError, fit
from stainbench.training.recipe import recipe_from_dict


def _weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    payload = load_checkpoint(path)
    return {n: payload["state"][n] for n in payload["networks"]}


@pytest.mark.parametrize("family", ["pix2pix", "cyclegan"])
def test_resume_equals_uninterrupted(
    family: str, demo_stores: Path, make_recipe: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    # pix2pix: dropout (global RNG) and the data order; cyclegan: image pools (own RNGs)
    recipe = recipe_from_dict(make_recipe(family, train={"steps": 5, "decay_steps": 3}))
    store = demo_stores / "paired.zarr"
    fit(recipe, run_dir=tmp_path / "straight", store=store, progress=False)

    part = tmp_path / "resumed"
    first = fit(recipe, run_dir=part, store=store, progress=False, stop_after=2)
    assert first.step == 2 and load_checkpoint(part / "last.pt")["step"] == 2
    second = fit(recipe, run_dir=part, store=store, progress=False, resume=True)
    assert second.resumed_from == 2 and second.step == 5

    a, b = _weights(tmp_path / "straight" / "last.pt"), _weights(part / "last.pt")
    assert a.keys() == b.keys()
    for net in a:
        for key in a[net]:
            torch.testing.assert_close(a[net][key], b[net][key], rtol=1e-6, atol=1e-7)
    sa = load_checkpoint(tmp_path / "straight" / "last.pt")["state"]
    sb = load_checkpoint(part / "last.pt")["state"]
    for name in sa["sched"]:
        assert sa["sched"][name]["last_epoch"] == sb["sched"][name]["last_epoch"] == 5

    # the logs of both runs list the same steps
    def steps(run: Path) -> list[tuple[str, int]]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [(r["kind"], r["step"]) for r in map(json.loads, lines)]

    assert steps(tmp_path / "straight") == steps(part)


def test_resume_needs_last_and_refuses_overwrite(
    demo_stores: Path, make_recipe: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    recipe = recipe_from_dict(make_recipe("unet", train={"steps": 1}))
    store = demo_stores / "paired.zarr"
    with pytest.raises(TrainingError, match=r"no last\.pt"):
        fit(recipe, run_dir=tmp_path, store=store, progress=False, resume=True)
    fit(recipe, run_dir=tmp_path, store=store, progress=False)
    with pytest.raises(TrainingError, match="--resume"):
        fit(recipe, run_dir=tmp_path, store=store, progress=False)


def test_resume_with_checkpoint_of_another_family(
    demo_stores: Path, make_recipe: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    store = demo_stores / "paired.zarr"
    fit(
        recipe_from_dict(make_recipe("unet", train={"steps": 1})),
        run_dir=tmp_path,
        store=store,
        progress=False,
    )
    other = recipe_from_dict(make_recipe("pix2pix", train={"steps": 2}))
    with pytest.raises(ModelError) as exc:
        fit(other, run_dir=tmp_path, store=store, progress=False, resume=True)
    assert "unet checkpoint" in str(exc.value) and "pix2pix" in str(exc.value)
    assert "\n" not in str(exc.value)
