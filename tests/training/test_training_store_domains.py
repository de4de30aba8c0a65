"""Training needs both domains; a store holding only A is one line, and recipe steps vs decay."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from stainbench.data.ingest import IngestOptions, ingest
from stainbench.errors import ConfigError, DataError
from stainbench.training.loop import fit
from stainbench.training.recipe import recipe_from_dict


def test_a_volume_store_with_only_domain_a_is_refused(
    tmp_path: Path, make_recipe: Callable[..., dict[str, Any]]
) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "src" / "A").mkdir(parents=True)
    for name in ("x", "y"):
        vol = rng.integers(0, 65535, (12, 32, 32), dtype=np.uint16)
        tifffile.imwrite(tmp_path / "src" / "A" / f"{name}.tif", vol)
    store = tmp_path / "a_only.zarr"
    ingest(tmp_path / "src", store, IngestOptions(layout="volume", chunks=(4, 32, 32)))
    recipe = recipe_from_dict(make_recipe("unet", data={"patch_size": 16}))
    with pytest.raises(DataError) as info:
        fit(recipe, run_dir=tmp_path / "run", store=store, progress=False)
    msg = str(info.value)
    assert "has no domain B" in msg and "\n" not in msg
    assert not (tmp_path / "run" / "last.pt").exists()


def test_fewer_steps_than_the_decay_names_the_fix(
    make_recipe: Callable[..., dict[str, Any]],
) -> None:
    with pytest.raises(ConfigError, match=r"train.decay_steps=500"):
        recipe_from_dict(make_recipe("unet", train={"steps": 1000, "decay_steps": 100000}))
