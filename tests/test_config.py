"""Typed config loading: unknown keys, wrong types and overrides name the dotted key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from stainbench.config import apply_overrides, from_dict, load_yaml, to_dict
from stainbench.errors import ConfigError


@dataclass(frozen=True)
class Optim:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)


@dataclass(frozen=True)
class Recipe:
    family: Literal["unet", "pix2pix", "cyclegan"]
    steps: int = 10
    data: Path | None = None
    optim: Optim = field(default_factory=Optim)
    tags: list[str] = field(default_factory=list)


def test_round_trip() -> None:
    r = from_dict(Recipe, {"family": "unet", "steps": 3, "optim": {"lr": 1}, "data": "x.zarr"})
    assert r.optim.lr == 1.0 and isinstance(r.optim.lr, float)
    assert r.data == Path("x.zarr")
    assert from_dict(Recipe, to_dict(r)) == r


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"family": "unet", "stepz": 1}, "stepz: unknown key"),
        ({"family": "gan"}, "family: expected one of"),
        ({"family": "unet", "steps": "many"}, "steps: expected an integer"),
        ({"family": "unet", "steps": True}, "steps: expected an integer"),
        ({"family": "unet", "optim": {"lr": "fast"}}, "optim.lr: expected a number"),
        ({"family": "unet", "optim": {"betas": [0.5]}}, "optim.betas: expected 2 items"),
        ({"steps": 1}, "family: required key is missing"),
    ],
)
def test_errors_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(Recipe, data)


def test_overrides_parse_yaml_scalars() -> None:
    out = apply_overrides({"family": "unet", "optim": {"lr": 0.1}}, ["optim.lr=1e-3", "steps=5"])
    r = from_dict(Recipe, out)
    assert r.optim.lr == pytest.approx(1e-3) and r.steps == 5
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["nonsense"])


def test_load_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(lst)
