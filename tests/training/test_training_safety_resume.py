"""Resume safety: the run directory, changed recipes, the store's recorded path.

Real tiny runs on the real demo store; every refusal is checked to leave the run directory
exactly as it was (nothing lost, recipe.yaml never rewritten with values that were not used).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from stainbench.errors import DataError, TrainingError
from stainbench.training.checkpoint import load_checkpoint, load_generator
from stainbench.training.loop import fit
from stainbench.training.recipe import RESUMABLE_KEYS, recipe_changes, recipe_from_dict

Recipe = Callable[..., dict[str, Any]]


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def _one_line(exc: pytest.ExceptionInfo[Exception], *words: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for word in words:
        assert word in msg, msg
    return msg


def test_out_that_is_a_file(demo_stores: Path, make_recipe: Recipe, tmp_path: Path) -> None:
    recipe = recipe_from_dict(make_recipe("unet", train={"steps": 1}))
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    with pytest.raises(TrainingError) as exc:
        fit(recipe, run_dir=afile, store=demo_stores / "paired.zarr", progress=False)
    _one_line(exc, f"--out {afile} is a file, not a directory")
    with pytest.raises(TrainingError) as exc:
        fit(recipe, run_dir=afile / "sub", store=demo_stores / "paired.zarr", progress=False)
    _one_line(exc, str(afile), "is a file, not a directory")
    assert afile.read_text() == "keep me"


def test_cli_out_that_is_a_file(demo_stores: Path, make_recipe: Recipe, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(make_recipe("unet", train={"steps": 1})))
    (tmp_path / "afile").touch()
    store = str(demo_stores / "paired.zarr")
    args = ["train", str(recipe), "--out", "afile", "--data", store, "--no-progress"]
    proc = subprocess.run(
        [sys.executable, "-m", "stainbench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [
        "error: --out afile is a file, not a directory; give a new or existing run directory"
    ], proc.stderr


@pytest.fixture
def finished_run(demo_stores: Path, make_recipe: Recipe, tmp_path: Path) -> Path:
    """A tiny unet run of 2 steps (lr 2e-4, batch 2), finished."""
    run = tmp_path / "run"
    recipe = recipe_from_dict(make_recipe("unet", train={"steps": 2}))
    fit(recipe, run_dir=run, store=demo_stores / "paired.zarr", progress=False)
    return run


def test_changed_hyperparameters_are_refused_and_nothing_is_touched(
    finished_run: Path, demo_stores: Path, make_recipe: Recipe
) -> None:
    before = _snapshot(finished_run)
    changed = recipe_from_dict(
        make_recipe("unet", optim={"lr": 0.1}, train={"steps": 100, "batch_size": 1})
    )
    with pytest.raises(TrainingError) as exc:
        fit(changed, run_dir=finished_run, store=demo_stores / "paired.zarr", resume=True)
    msg = _one_line(exc, "optim.lr 0.0002 -> 0.1", "train.batch_size 2 -> 1", "another --out")
    assert "train.steps" not in msg.split("changed;")[0]  # steps may change: not listed
    assert _snapshot(finished_run) == before
    saved = yaml.safe_load((finished_run / "recipe.yaml").read_text())
    assert saved["optim"]["lr"] == 0.0002 and saved["train"]["batch_size"] == 2


def test_every_other_key_is_refused_too(finished_run: Path, make_recipe: Recipe) -> None:
    saved = load_checkpoint(finished_run / "last.pt")["recipe"]
    cases = {
        "loss.kld": make_recipe("unet", loss={"kld": 0.5}),
        "data.patch_size": make_recipe("unet", data={"patch_size": 32}),
        "train.seed": make_recipe("unet", train={"seed": 3}),
        "generator.kwargs.base_width": make_recipe(
            "unet", generator={"arch": "unet", "kwargs": {"depth": 3, "base_width": 8}}
        ),
    }
    for key, data in cases.items():
        changes = recipe_changes(saved, recipe_from_dict(data))
        assert key in changes and key not in RESUMABLE_KEYS, (key, changes)
    same = recipe_changes(saved, recipe_from_dict(make_recipe("unet", train={"steps": 2})))
    assert set(same) <= {"data.store"}  # the fixture's recipe names no store


def test_raising_steps_on_resume_matches_training_that_long_from_the_start(
    demo_stores: Path, make_recipe: Recipe, tmp_path: Path
) -> None:
    # the first part plans 4 steps (LR halves at step 3) but stops after 3: its optimizer
    # holds the halved LR for step 3; the resume must use the new schedule's LR there
    store = demo_stores / "paired.zarr"
    full = recipe_from_dict(make_recipe("unet", train={"steps": 6, "decay_steps": 2}))
    short = recipe_from_dict(make_recipe("unet", train={"steps": 4, "decay_steps": 1}))
    fit(full, run_dir=tmp_path / "straight", store=store, progress=False)
    fit(short, run_dir=tmp_path / "part", store=store, progress=False, stop_after=3)
    result = fit(full, run_dir=tmp_path / "part", store=store, progress=False, resume=True)
    assert result.resumed_from == 3 and result.step == 6

    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    for key, tensor in a["state"]["G_AB"].items():
        assert torch.equal(tensor, b["state"]["G_AB"][key]), key

    def lrs(run: Path) -> list[tuple[int, float]]:
        rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        return [(r["step"], r["lr"]) for r in rows if r["kind"] == "train"]

    # rows up to step 3 are the first part's (its row 3 names the LR its own plan chose
    # next); every row the resume wrote matches the uninterrupted run
    resumed = [row for row in lrs(tmp_path / "part") if row[0] > 3]
    assert resumed == [row for row in lrs(tmp_path / "straight") if row[0] > 3]
    assert [s for s, _ in lrs(tmp_path / "part")] == [1, 2, 3, 4, 5, 6]
    saved = yaml.safe_load((tmp_path / "part" / "recipe.yaml").read_text())
    assert saved["train"]["steps"] == 6 and saved["train"]["decay_steps"] == 2


def test_cadence_may_change_steps_may_not_go_back(
    finished_run: Path, demo_stores: Path, make_recipe: Recipe
) -> None:
    store = demo_stores / "paired.zarr"
    back = recipe_from_dict(make_recipe("unet", train={"steps": 1}))
    before = _snapshot(finished_run)
    with pytest.raises(TrainingError) as exc:
        fit(back, run_dir=finished_run, store=store, progress=False, resume=True)
    _one_line(exc, "step 2", "train.steps=1")
    assert _snapshot(finished_run) == before

    longer = recipe_from_dict(
        make_recipe("unet", train={"steps": 4, "log_every": 2, "val_every": 4, "threads": 2})
    )
    result = fit(longer, run_dir=finished_run, store=store, progress=False, resume=True)
    assert result.step == 4
    saved = yaml.safe_load((finished_run / "recipe.yaml").read_text())
    assert saved["train"]["log_every"] == 2 and saved["train"]["val_every"] == 4


def test_resume_keeps_the_run_name(
    finished_run: Path, demo_stores: Path, make_recipe: Recipe
) -> None:
    renamed = recipe_from_dict({**make_recipe("unet", train={"steps": 3}), "name": "other"})
    fit(
        renamed,
        run_dir=finished_run,
        store=demo_stores / "paired.zarr",
        progress=False,
        resume=True,
    )
    assert load_checkpoint(finished_run / "last.pt")["run_name"] == "tiny_unet"
    assert yaml.safe_load((finished_run / "recipe.yaml").read_text())["name"] == "tiny_unet"


def test_store_path_is_recorded_absolute_and_found_from_elsewhere(
    demo_stores: Path, make_recipe: Recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    shutil.copytree(demo_stores / "paired.zarr", work / "he.zarr")
    monkeypatch.chdir(work)
    recipe = recipe_from_dict(make_recipe("unet", train={"steps": 2}))
    fit(recipe, run_dir=Path("runs/u"), store="he.zarr", progress=False)

    absolute = str((work / "he.zarr").resolve())
    payload = load_checkpoint(work / "runs/u/last.pt")
    assert payload["data"]["store"] == absolute
    assert payload["data"]["store_given"] == "he.zarr"
    assert payload["recipe"]["data"]["store"] == absolute
    assert yaml.safe_load((work / "runs/u/recipe.yaml").read_text())["data"]["store"] == absolute
    assert load_generator(work / "runs/u/last.pt")[1].store == absolute

    # from another directory, without a store: the recorded one is used
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    longer = recipe_from_dict(make_recipe("unet", train={"steps": 3}))
    result = fit(longer, run_dir=work / "runs/u", progress=False, resume=True)
    assert result.step == 3 and result.resumed_from == 2

    # the store moved away: one line that says to pass --data; then --data works
    (work / "he.zarr").rename(work / "moved.zarr")
    before = _snapshot(work / "runs/u")
    more = recipe_from_dict(make_recipe("unet", train={"steps": 4}))
    with pytest.raises(DataError) as exc:
        fit(more, run_dir=work / "runs/u", progress=False, resume=True)
    _one_line(exc, absolute, "--data")
    assert _snapshot(work / "runs/u") == before
    result = fit(
        more, run_dir=work / "runs/u", store=work / "moved.zarr", progress=False, resume=True
    )
    assert result.step == 4
    assert load_checkpoint(work / "runs/u/last.pt")["data"]["store"] == str(
        (work / "moved.zarr").resolve()
    )


def test_corrupt_metrics_log_is_one_line(
    finished_run: Path, demo_stores: Path, make_recipe: Recipe
) -> None:
    with (finished_run / "metrics.jsonl").open("a") as fh:
        fh.write("{not json\n")
    before = _snapshot(finished_run)
    longer = recipe_from_dict(make_recipe("unet", train={"steps": 3}))
    with pytest.raises(TrainingError) as exc:
        fit(
            longer,
            run_dir=finished_run,
            store=demo_stores / "paired.zarr",
            progress=False,
            resume=True,
        )
    _one_line(exc, "metrics.jsonl", "not JSON")
    assert _snapshot(finished_run) == before
