"""Checkpoints: round trip of every registered model, atomic writes, one-line load errors."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from stainbench.errors import ModelError
from stainbench.models import create_model, get_entry, list_models
from stainbench.training.checkpoint import (
    SCHEMA_VERSION,
    load_checkpoint,
    load_generator,
    save_checkpoint,
)

NORM = {
    "A": {"mode": "range", "offset": [127.5] * 3, "scale": [127.5] * 3},
    "B": {"mode": "zscore", "offset": [200.0, 180.0, 190.0], "scale": [30.0, 40.0, 35.0]},
}


def _payload(nets: dict[str, tuple[str, dict[str, Any]]], family: str = "cyclegan") -> dict:
    torch.manual_seed(0)
    networks, state = {}, {}
    for key, (arch, kwargs) in nets.items():
        networks[key] = {"arch": arch, "kwargs": kwargs}
        state[key] = create_model(arch, **kwargs).state_dict()
    state["rng"] = {"torch": torch.get_rng_state()}
    return {
        "family": family,
        "run_name": "t",
        "step": 7,
        "epoch": 1,
        "recipe": {"family": family, "train": {"steps": 7}},
        "networks": networks,
        "state": state,
        "normalization": NORM,
        "data": {"store": "x.zarr", "manifest_hash": "abc"},
    }


@pytest.mark.parametrize("name", list_models())
def test_round_trip_every_model(tmp_path: Path, name: str) -> None:
    kwargs = dict(get_entry(name).small_kwargs)
    payload = _payload({"G_AB": (name, kwargs)})
    path = save_checkpoint(tmp_path / "run" / "last.pt", payload)
    # plain data only: the strict loader reads it
    raw = torch.load(path, weights_only=True)
    assert raw["schema_version"] == SCHEMA_VERSION and raw["versions"]["torch"]
    data = load_checkpoint(path)
    assert data["networks"]["G_AB"] == {"arch": name, "kwargs": kwargs}
    original = create_model(name, **kwargs)
    original.load_state_dict(payload["state"]["G_AB"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    if get_entry(name).role == "generator":
        model, info = load_generator(path)
        assert not model.training
        assert info.size_multiple == original.size_multiple
        assert info.normalization == NORM and info.manifest_hash == "abc"
        assert (info.family, info.arch, info.step) == ("cyclegan", name, 7)
        with torch.no_grad():
            torch.testing.assert_close(model(x), original.eval()(x))
    else:
        with pytest.raises(ModelError, match="not a generator"):
            load_generator(path)


def test_g_ba_swaps_normalization(tmp_path: Path) -> None:
    kw = get_entry("resnet").small_kwargs
    path = save_checkpoint(
        tmp_path / "c.pt", _payload({"G_AB": ("resnet", kw), "G_BA": ("resnet", kw)})
    )
    _, info = load_generator(path, name="G_BA")
    assert info.normalization == {"A": NORM["B"], "B": NORM["A"]}
    with pytest.raises(ModelError, match="D_A"):
        load_generator(path, name="D_A")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    save_checkpoint(path, _payload({"G_AB": ("unet", get_entry("unet").small_kwargs)}))
    first = path.read_bytes()

    class Boom:
        def __reduce__(self) -> Any:
            raise RuntimeError("disk full")

    bad = _payload({"G_AB": ("unet", get_entry("unet").small_kwargs)})
    bad["recipe"] = {"x": Boom()}
    with pytest.raises(RuntimeError):
        save_checkpoint(path, bad)
    assert path.read_bytes() == first  # the old checkpoint survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def _one_line(exc: pytest.ExceptionInfo[ModelError], *words: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    for word in words:
        assert word in msg, msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as exc:
        load_checkpoint(tmp_path / "nope.pt")
    _one_line(exc, "nope.pt", "no such")


def test_foreign_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(ModelError) as exc:
        load_checkpoint(path)
    _one_line(exc, "foreign.pt", "not a stainbench checkpoint")


def test_corrupt_and_truncated_files(tmp_path: Path) -> None:
    good = save_checkpoint(
        tmp_path / "good.pt", _payload({"G_AB": ("unet", get_entry("unet").small_kwargs)})
    )
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 this is not a checkpoint" * 10)
    for path in (trunc, garbage):
        with pytest.raises(ModelError) as exc:
            load_checkpoint(path)
        _one_line(exc, path.name)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "code.pt"

    torch.save({"format": "stainbench-checkpoint", "obj": pickle.PicklingError("x")}, path)
    with pytest.raises(ModelError) as exc:
        load_checkpoint(path)
    _one_line(exc, "code.pt", "pickled objects")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    payload = _payload({"G_AB": ("unet", get_entry("unet").small_kwargs)})
    payload["schema_version"] = SCHEMA_VERSION + 1
    path = save_checkpoint(tmp_path / "new.pt", payload)
    with pytest.raises(ModelError) as exc:
        load_checkpoint(path)
    _one_line(exc, "new.pt", "newer", "upgrade")


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    payload = _payload({"G_AB": ("unet", {"depth": 3, "base_width": 4})})
    payload["networks"]["G_AB"]["kwargs"] = {"depth": 3, "base_width": 8}
    path = save_checkpoint(tmp_path / "mismatch.pt", payload)
    with pytest.raises(ModelError) as exc:
        load_generator(path)
    _one_line(exc, "mismatch.pt", "G_AB")
