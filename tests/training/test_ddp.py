"""Two-process data-parallel training on CPU (torchrun, gloo): it runs, only rank 0 writes,
and it computes what one process computes on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from stainbench.models import create_model
from stainbench.training.checkpoint import load_checkpoint, load_generator
from stainbench.training.data import StepBatches
from stainbench.training.loop import fit
from stainbench.training.recipe import recipe_from_dict


def test_step_batches_shard_the_global_stream() -> None:
    """Rank shares of a step are disjoint and together equal one process's global batch."""
    single = list(StepBatches(n=10, batch=4, seed=3, start=0, stop=5))
    ranks = [
        list(StepBatches(n=10, batch=2, seed=3, start=0, stop=5, rank=r, world=2)) for r in (0, 1)
    ]
    for step in range(5):
        assert ranks[0][step] + ranks[1][step] == single[step]
    # epochs are permutations of all indices
    stream = [key for batch in single for key in batch]
    assert sorted(i for e, i in stream if e == 0) == list(range(10))
    # resuming at step 3 continues the same stream
    assert list(StepBatches(n=10, batch=4, seed=3, start=3, stop=5)) == single[3:]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(
    demo_stores: Path, make_recipe: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    # MSE without weights or KLD: the mean over two ranks' halves is the global batch mean
    base = make_recipe(
        "unet",
        loss={"weight_map": "none", "kld": 0.0},
        train={"steps": 3, "val_every": 3, "batch_size": 2},
    )
    recipe_path = tmp_path / "ddp.yaml"
    recipe_path.write_text(yaml.safe_dump(base))
    run = tmp_path / "ddp_run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "stainbench",
            "train",
            str(recipe_path),
            "--data",
            str(demo_stores / "paired.zarr"),
            "--out",
            str(run),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # only rank 0 wrote: one set of files, every step logged once, one result table
    names = sorted(p.name for p in run.iterdir())
    assert names == ["best.pt", "last.pt", "metrics.csv", "metrics.jsonl", "recipe.yaml", "val.csv"]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert proc.stdout.count("identity (output = input)") == 1
    payload = load_checkpoint(run / "last.pt")
    assert len(payload["state"]["rng"]["ranks"]) == 2

    # one process with the doubled batch sees the same samples and takes the same steps
    single = {**base, "train": {**base["train"], "batch_size": 4}}
    ref = fit(
        recipe_from_dict(single),
        run_dir=tmp_path / "single",
        store=demo_stores / "paired.zarr",
        progress=False,
    )
    # compare what the networks compute (biases right before an instance norm get only
    # rounding-noise gradients, which Adam amplifies differently; they do not change outputs)
    ddp_model, _ = load_generator(run / "last.pt")
    ref_model, _ = load_generator(ref.last)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    spec = payload["networks"]["G_AB"]
    torch.manual_seed(0)  # the recipe's seed: the initial weights
    initial = create_model(spec["arch"], **spec["kwargs"]).eval()
    with torch.no_grad():
        out = ddp_model(x)
        torch.testing.assert_close(out, ref_model(x), rtol=1e-4, atol=1e-4)
        assert (out - initial(x)).abs().max() > 1e-2  # training moved it: not trivially equal
