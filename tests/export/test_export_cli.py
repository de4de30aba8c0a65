"""``stainbench export``: one-line errors for bad input, and the real-server ``--check``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from stainbench.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["export", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_bad_inputs_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], checkpoint_factory, small_profile, repo_root
) -> None:
    repo = tmp_path / "repo"
    not_ours = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, not_ours)
    code, _, err = run(capsys, not_ours, "--repo", repo, "-p", small_profile)
    assert code == 1 and "not a stainbench checkpoint" in one_line_error(err)

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    code, _, err = run(capsys, corrupt, "--repo", repo, "-p", small_profile)
    assert code == 1 and "corrupt" in one_line_error(err)

    unknown = checkpoint_factory("unet", run_name="u")
    payload = torch.load(unknown, weights_only=True)
    payload["family"] = "diffusion"
    torch.save(payload, unknown)
    code, _, err = run(capsys, unknown, "--repo", repo, "-p", small_profile)
    assert code == 1 and "unknown model family 'diffusion'" in one_line_error(err)

    ckpt = checkpoint_factory("unet")
    a_file = tmp_path / "repo_file"
    a_file.write_text("x")
    code, _, err = run(capsys, ckpt, "--repo", a_file, "-p", small_profile)
    assert code == 1 and "is a file" in one_line_error(err)

    code, _, err = run(capsys, ckpt, "--repo", repo, "-p", repo_root / "export/tensorrt-fp16.yaml")
    assert code == 1 and "TensorRT" in one_line_error(err)
    assert not repo.exists()

    code, out, err = run(capsys, ckpt, "--repo", repo, "-p", small_profile, "--version", "3")
    assert code == 0, err
    assert "unet_demo" in out and (repo / "unet_demo" / "3" / "model.onnx").is_file()
    code, _, err = run(capsys, ckpt, "--repo", repo, "-p", small_profile, "--version", "3")
    assert code == 1 and "version 3 already exists" in one_line_error(err)
    code, _, err = run(capsys, ckpt, "--repo", repo, "-p", small_profile, "--name", "x/y")
    assert code == 1 and "invalid" in one_line_error(err)

    bad_profile = tmp_path / "bad.yaml"
    bad_profile.write_text("flavour: python\ntriton: {max_batch_size: many}\n")
    code, _, err = run(capsys, ckpt, "--repo", repo, "-p", bad_profile)
    assert code == 1 and "triton.max_batch_size: expected an integer" in one_line_error(err)

    code, _, err = run(capsys, ckpt, ckpt, "--name", "both")
    assert code == 2 and "--name needs exactly one checkpoint" in err
    code, _, err = run(capsys)
    assert code == 2 and "--check" in err


@pytest.mark.slow
def test_export_families_baselines_and_check_real_server(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    checkpoint_factory,
    small_profile: Path,
    demo_store: Path,
) -> None:
    runs = [
        checkpoint_factory(f, run_name=f"r{i}", store=str(demo_store)).parent
        for i, f in enumerate(("unet", "pix2pix", "cyclegan"))
    ]
    repo = tmp_path / "model_repository"
    args = [*runs, "--repo", repo, "-p", small_profile, "--baselines", demo_store, "--check"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    for name in ("unet_r0", "pix2pix_r1", "cyclegan_r2", "reinhard", "macenko"):
        assert (repo / name / "1" / "export_manifest.json").is_file()
        assert name in out
    assert out.count("identical to in-process") == 5

    # break two models in two ways: Triton cannot load one, ONNX Runtime cannot read the other
    (repo / "pix2pix_r1" / "1" / "model.py").write_text("import no_such_module_here\n")
    (repo / "cyclegan_r2" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    shutil.rmtree(repo / "macenko")
    code, out, err = run(capsys, "--check", "--repo", repo)
    assert code == 1
    line = one_line_error(err)
    assert "2 model(s)" in line
    assert "pix2pix_r1: Triton failed to load it" in line and "no_such_module_here" in line
    assert "cyclegan_r2: " in line and "ONNX" in line
    assert "unet_r0" not in line and out.count("identical to in-process") == 2
