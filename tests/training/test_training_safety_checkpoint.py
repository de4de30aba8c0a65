"""Unreadable checkpoints: every kind of bad file is one ModelError line, never a traceback.

A real checkpoint is written by a real (tiny) training run; the bad files are made from it
(truncated copies) or written by hand (text, empty, a zip that is no torch file, a plain
pickle). The CLI runs as a real process for ``train --resume`` and ``export``.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stainbench.errors import ModelError
from stainbench.training.checkpoint import load_checkpoint, load_generator
from stainbench.training.loop import fit
from stainbench.training.recipe import recipe_from_dict


@pytest.fixture(scope="module")
def real_checkpoint(demo_stores: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ckpt_run") / "run"
    recipe = recipe_from_dict(
        {
            "family": "unet",
            "data": {"patch_size": 16},
            "generator": {"arch": "unet", "kwargs": {"depth": 3, "base_width": 4}},
            "train": {"steps": 1, "batch_size": 2, "threads": 1},
        }
    )
    fit(recipe, run_dir=run, store=demo_stores / "paired.zarr", progress=False)
    return run / "last.pt"


def _zip_without_torch_data() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("notes/readme.txt", "just a zip archive")
    return buf.getvalue()


BAD_FILES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    # name: (bytes of the bad file from the real checkpoint's bytes, phrase of the reason)
    "text": (lambda good: b"hello\n", "not a file written by torch.save"),
    "empty": (lambda good: b"", "empty file"),
    "half": (lambda good: good[: len(good) // 2], "truncated"),
    "head": (lambda good: good[:100], "truncated"),
    "tail_cut": (lambda good: good[:-30], "truncated"),
    "zip": (lambda good: _zip_without_torch_data(), "not one written by torch.save"),
    "pickle": (lambda good: pickle.dumps({"format": "x"}), "not a torch.save checkpoint"),
    "binary": (lambda good: bytes(range(256)) * 8, "not a file written by torch.save"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_is_one_model_error_line(real_checkpoint: Path, tmp_path: Path, kind: str) -> None:
    make, phrase = BAD_FILES[kind]
    path = tmp_path / f"{kind}.pt"
    path.write_bytes(make(real_checkpoint.read_bytes()))
    for load in (load_checkpoint, load_generator):
        with pytest.raises(ModelError) as exc:
            load(path)
        msg = str(exc.value)
        assert "\n" not in msg, msg
        assert f"{kind}.pt" in msg and phrase in msg, msg
        assert "stainbench train" in msg or "stainbench checkpoint" in msg, msg


def test_the_good_checkpoint_still_loads(real_checkpoint: Path) -> None:
    payload = load_checkpoint(real_checkpoint)
    assert payload["family"] == "unet" and payload["step"] == 1


def test_a_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(ModelError, match=r"dir\.pt: is a directory"):
        load_checkpoint(tmp_path / "dir.pt")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stainbench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def _one_red_line(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_cli_resume_and_export_of_a_text_file(
    demo_stores: Path, make_recipe: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(make_recipe("unet", train={"steps": 1})))
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_text("hello\n")
    proc = _cli(
        "train",
        str(recipe),
        "--data",
        str(demo_stores / "paired.zarr"),
        "--out",
        str(run),
        "--resume",
        "--no-progress",
        cwd=tmp_path,
    )
    _one_red_line(proc, "last.pt", "not a readable stainbench checkpoint")
    assert (run / "last.pt").read_text() == "hello\n"  # nothing touched
    assert sorted(p.name for p in run.iterdir()) == ["last.pt"]

    (tmp_path / "junk.pt").write_text("hello\n")
    proc = _cli("export", "junk.pt", "--repo", str(tmp_path / "repo"), cwd=tmp_path)
    _one_red_line(proc, "junk.pt", "not a readable stainbench checkpoint")
