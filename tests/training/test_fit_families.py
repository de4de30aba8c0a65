"""Each family trains a few steps on a tiny real store: finite losses, a changed generator,
the run directory's files, checkpoints that load."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from stainbench.training.checkpoint import load_checkpoint, load_generator
from stainbench.training.loop import fit
from stainbench.training.recipe import recipe_from_dict

FAMILIES = ["unet", "pix2pix", "cyclegan"]
EXPECTED_NETS = {
    "unet": {"G_AB"},
    "pix2pix": {"G_AB", "D"},
    "cyclegan": {"G_AB", "G_BA", "D_A", "D_B"},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains(
    family: str,
    demo_stores: Path,
    make_recipe: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    recipe = recipe_from_dict(make_recipe(family))
    steps_seen: list[dict[str, float]] = []

    def on_step(step: int, losses: dict[str, float]) -> None:
        steps_seen.append(losses)

    run = tmp_path / "run"
    result = fit(
        recipe, run_dir=run, store=demo_stores / "paired.zarr", progress=False, on_step=on_step
    )
    assert result.step == 4 and len(steps_seen) == 4
    for losses in steps_seen:
        assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values())

    # files of the run directory
    for name in ("last.pt", "best.pt", "recipe.yaml", "metrics.jsonl", "metrics.csv", "val.csv"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp"))
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["family"] == family
    assert saved["data"]["store"] == str((demo_stores / "paired.zarr").resolve())
    assert saved["loss"]  # the family's defaults are written out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    vals = [r for r in records if r["kind"] == "val"]
    assert [(r["step"], r["model"]) for r in vals] == [(0, "identity"), (2, "G_AB"), (4, "G_AB")]
    with (run / "val.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 3
    assert set(result.val) == {"ssim", "psnr", "mae"}

    # checkpoints: the networks, normalization, data identity; the generator changed
    payload = load_checkpoint(run / "last.pt")
    assert set(payload["networks"]) == EXPECTED_NETS[family]
    assert payload["step"] == 4 and payload["family"] == family
    assert payload["normalization"]["A"]["mode"] == "range"
    assert len(payload["data"]["manifest_hash"]) == 64
    model, info = load_generator(run / "best.pt")
    assert info.family == family and info.size_multiple in (4, 8)
    torch.manual_seed(recipe.train.seed)  # the initial weights, rebuilt as fit built them
    from stainbench.models import create_model

    spec = payload["networks"]["G_AB"]
    initial = create_model(spec["arch"], **spec["kwargs"])
    final = load_generator(run / "last.pt")[0]
    changed = [
        not torch.equal(p0, p1)
        for p0, p1 in zip(initial.parameters(), final.parameters(), strict=True)
    ]
    assert all(changed)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert model(x).shape == (1, 3, 16, 16)


def test_cyclegan_on_unpaired_store_writes_best(
    demo_stores: Path, make_recipe: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    """No paired validation split: no metrics, best.pt is the final state."""
    recipe = recipe_from_dict(make_recipe("cyclegan", train={"steps": 2}))
    result = fit(recipe, run_dir=tmp_path, store=demo_stores / "unpaired.zarr", progress=False)
    assert result.val == {} and result.identity == {}
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 2


@pytest.mark.parametrize("options", [{"channels_last": True}, {"bf16": True}])
def test_channels_last_and_bf16_options(
    options: dict[str, bool],
    demo_stores: Path,
    make_recipe: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    """Both switches train (bf16 autocast is for GPUs; on CPU it only has to work)."""
    recipe = recipe_from_dict(make_recipe("pix2pix", train={"steps": 2, **options}))
    result = fit(recipe, run_dir=tmp_path, store=demo_stores / "paired.zarr", progress=False)
    assert result.step == 2 and all(v == v for v in result.val.values())  # no NaN
    model, _ = load_generator(result.last)
    assert model(torch.zeros(1, 3, 16, 16)).dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_family_trains_on_cuda(
    family: str,
    bf16: bool,
    demo_stores: Path,
    make_recipe: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    """On a GPU: finite losses, the work on CUDA, the checkpoint loads on a CPU."""
    recipe = recipe_from_dict(make_recipe(family, train={"device": "cuda", "bf16": bf16}))
    steps_seen: list[dict[str, float]] = []

    def cuda_allocations() -> int:  # a running count of the caching allocator's allocations
        return int(torch.cuda.memory_stats().get("allocation.all.allocated", 0))

    before = cuda_allocations()
    result = fit(
        recipe,
        run_dir=tmp_path,
        store=demo_stores / "paired.zarr",
        progress=False,
        on_step=lambda step, losses: steps_seen.append(losses),
    )
    assert result.step == 4 and len(steps_seen) == 4
    assert cuda_allocations() - before > 100  # the steps ran on the GPU
    for losses in steps_seen:
        assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert all(v == v for v in result.val.values())  # validation ran: no NaN
    model, _ = load_generator(result.last)
    out = model(torch.rand(1, 3, 16, 16) * 2 - 1)
    assert out.device.type == "cpu" and torch.isfinite(out).all()


def test_cyclegan_trains_the_same_with_winograd_convolutions() -> None:
    # resnet blocks at 128 channels on 16 x 16 maps take the Winograd path (conv_impl auto);
    # three optimisation steps from the same seed give the losses and weights of nn.Conv2d
    from stainbench.data.transforms import Normalization
    from stainbench.models.winograd import WinogradConv2d
    from stainbench.training.loop import build_task
    from stainbench.training.task import TaskContext

    norm = Normalization("range", "B", (127.5,) * 3, (127.5,) * 3)
    ctx = TaskContext(3, 3, {"A": norm, "B": norm}, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    batches = [
        {k: torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1 for k in ("A", "B")} for _ in range(3)
    ]
    runs = {}
    for impl in ("native", "auto"):
        recipe = recipe_from_dict(
            {
                "family": "cyclegan",
                "generator": {
                    "arch": "resnet",
                    "kwargs": {"n_blocks": 1, "base_width": 32, "conv_impl": impl},
                },
                "discriminator": {"arch": "patchgan", "kwargs": {"base_width": 8, "n_layers": 2}},
                "data": {"patch_size": 64},
                "train": {"steps": 3},
            }
        )
        torch.manual_seed(0)
        task = build_task(recipe, ctx)
        used = [m for m in task.networks["G_AB"].modules() if isinstance(m, WinogradConv2d)]
        assert len(used) == (2 if impl == "auto" else 0)
        losses = []
        for batch in batches:
            task.set_input(batch)
            losses.append(task.optimize())
        runs[impl] = (losses, task.networks["G_AB"].state_dict())
    for got, want in zip(runs["auto"][0], runs["native"][0], strict=True):
        assert got.keys() == want.keys()
        for key in got:
            assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-5), key
    # Adam moves a weight by about lr per step whatever its gradient's size, so a weight whose
    # gradient is near zero can move either way: the weights agree to 2 lr per step
    lr = recipe.optim.lr
    for key, value in runs["native"][1].items():
        assert (runs["auto"][1][key] - value).abs().max().item() <= 2 * lr * len(batches), key
