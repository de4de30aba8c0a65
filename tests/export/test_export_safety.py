"""Exports that would serve the wrong thing are refused or announced, and write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from stainbench.cli.main import main
from stainbench.data.transforms import Normalization
from stainbench.errors import ExportError
from stainbench.export.exporter import require_8bit_model


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main(["export", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _norm(mode: str, offset: float, scale: float) -> dict[str, dict]:
    a = Normalization(mode, "A", (offset,) * 3, (scale,) * 3).to_dict()
    return {"A": a, "B": dict(a, domain="B")}


@pytest.mark.parametrize(
    ("mode", "offset", "scale", "ok"),
    [
        ("range", 127.5, 127.5, True),  # uint8 [0, 255]
        ("range", 32767.5, 32767.5, False),  # uint16 [0, 65535]
        ("percentile", 130.0, 110.0, True),  # [20, 240]
        ("percentile", 2000.0, 1500.0, False),
        ("zscore", 200.0, 50.0, True),  # 50^2 <= (255 - 200) * 200
        ("zscore", 200.0, 120.0, False),  # no 8-bit data has this mean and spread
        ("zscore", 900.0, 10.0, False),
    ],
)
def test_8bit_bound_of_the_normalization(mode: str, offset: float, scale: float, ok: bool) -> None:
    norm = _norm(mode, offset, scale)
    if ok:
        require_8bit_model(norm, "ckpt")
    else:
        with pytest.raises(ExportError, match=r"ckpt: trained on more than 8-bit data"):
            require_8bit_model(norm, "ckpt")


def test_a_model_trained_on_16_bit_data_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], checkpoint_factory, small_profile
) -> None:
    ckpt = checkpoint_factory("unet", run_name="u16", norm=_norm("range", 32767.5, 32767.5))
    repo = tmp_path / "repo"
    code, _, err = run(capsys, ckpt, "--repo", repo, "-p", small_profile)
    line = error_line(err)
    assert code == 1 and "more than 8-bit data" in line and "65535" in line
    assert not repo.exists()


@pytest.fixture
def two_runs(tmp_path: Path, checkpoint_factory) -> tuple[Path, Path]:
    """``runs/exp_a/last.pt`` and ``runs/exp_b/last.pt``: two runs of one recipe ``exp``."""
    a = checkpoint_factory("unet", run_name="exp", path=tmp_path / "runs/exp_a/last.pt")
    b = checkpoint_factory("unet", run_name="exp", path=tmp_path / "runs/exp_b/last.pt", seed=1)
    return a, b


def test_two_runs_under_one_served_name_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], two_runs, small_profile
) -> None:
    a, b = two_runs
    repo = tmp_path / "repo"
    code, _, err = run(capsys, a.parent, b.parent, "--repo", repo, "-p", small_profile)
    line = error_line(err)
    assert code == 1 and "'unet_exp'" in line and "exp_a" in line and "exp_b" in line
    assert "--name" in line
    assert not repo.exists()


def test_a_new_version_from_another_run_is_announced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], two_runs, small_profile
) -> None:
    a, b = two_runs
    repo = tmp_path / "repo"
    assert run(capsys, a, "--repo", repo, "-p", small_profile)[0] == 0
    code, _, err = run(capsys, a, "--repo", repo, "-p", small_profile)  # same run: quiet
    assert code == 0 and "newest version only" not in err
    code, _, err = run(capsys, b, "--repo", repo, "-p", small_profile)
    assert code == 0
    flat = " ".join(err.split())
    assert "version 3 comes from" in flat and "exp_b" in flat and "exp_a" in flat
    assert "newest version only" in flat
    versions = sorted(p.name for p in (repo / "unet_exp").iterdir() if p.name.isdigit())
    assert versions == ["1", "2", "3"]


def test_a_parity_gate_without_the_training_store_is_announced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], checkpoint_factory, small_profile
) -> None:
    ckpt = checkpoint_factory("unet", run_name="moved", store=str(tmp_path / "gone.zarr"))
    code, _, err = run(capsys, ckpt, "--repo", tmp_path / "repo", "-p", small_profile)
    flat = " ".join(err.split())
    assert code == 0 and "random tiles only" in flat and "gone.zarr" in flat


def test_two_checkpoints_of_one_run_become_two_versions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], checkpoint_factory, small_profile
) -> None:
    best = checkpoint_factory("unet", run_name="exp", path=tmp_path / "runs/exp/best.pt")
    last = checkpoint_factory("unet", run_name="exp", path=tmp_path / "runs/exp/last.pt", seed=1)
    repo = tmp_path / "repo"
    code, _, err = run(capsys, best, last, "--repo", repo, "-p", small_profile)
    assert code == 0, err
    assert "newest version only" not in " ".join(err.split())
    assert sorted(p.name for p in (repo / "unet_exp").iterdir() if p.name.isdigit()) == ["1", "2"]
