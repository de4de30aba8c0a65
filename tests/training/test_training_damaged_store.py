"""Training refuses a damaged store instead of reading its missing chunks as black tiles."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stainbench.errors import DataError
from stainbench.training.loop import fit
from stainbench.training.recipe import recipe_from_dict


def test_a_store_with_a_missing_chunk_file_is_refused(
    demo_stores: Path, make_recipe: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    store = tmp_path / "paired.zarr"
    shutil.copytree(demo_stores / "paired.zarr", store)
    chunk = sorted(p for p in (store / "train" / "A" / "c").rglob("*") if p.is_file())[0]
    chunk.unlink()
    recipe = recipe_from_dict(make_recipe("unet", train={"steps": 1}))
    with pytest.raises(DataError) as info:
        fit(recipe, run_dir=tmp_path / "run", store=store, progress=False)
    msg = str(info.value)
    assert "damaged store" in msg and "train/A" in msg and "\n" not in msg
    assert not (tmp_path / "run" / "last.pt").exists()
