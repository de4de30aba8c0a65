"""Acceptance: ``compare`` on a tiny demo store with two tiny models exported by
``stainbench.export`` from real checkpoints, served by the real Triton server; the SSIM it
reports equals the in-process computation with ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stainbench.bench.compare import CompareOptions, run_compare

pytestmark = pytest.mark.slow


def _checkpoint(path: Path, family: str, arch: str, seed: int) -> Path:
    """A real checkpoint of a tiny generator, written with the training API."""
    import torch

    from stainbench.data.transforms import Normalization
    from stainbench.models import create_model, get_entry
    from stainbench.training.checkpoint import save_checkpoint

    kwargs = dict(get_entry(arch).small_kwargs)
    torch.manual_seed(seed)
    nets = {"G_AB": create_model(arch, **kwargs)}
    if family == "cyclegan":
        nets["G_BA"] = create_model(arch, **kwargs)
    norm = {
        "A": Normalization("range", "A", (127.5,) * 3, (127.5,) * 3).to_dict(),
        "B": Normalization("range", "B", (127.5,) * 3, (127.5,) * 3).to_dict(),
    }
    payload = {
        "family": family,
        "run_name": "tiny",
        "step": 1,
        "epoch": 1,
        "recipe": {"model": arch},
        "networks": {k: {"arch": arch, "kwargs": kwargs} for k in nets},
        "state": {k: v.state_dict() for k, v in nets.items()},
        "normalization": norm,
        "data": {"store": "", "manifest_hash": "0" * 64},
    }
    return save_checkpoint(path, payload)


def test_compare_two_exported_models_matches_in_process(tmp_path: Path) -> None:
    import onnxruntime as ort

    from stainbench.bench.valset import open_val_set
    from stainbench.data.demo import make_demo_store
    from stainbench.export.exporter import export_checkpoint
    from stainbench.export.profile import ExportProfile, ParitySettings, TritonSettings
    from stainbench.metrics import ssim

    make_demo_store(tmp_path / "demo", tile=32, n_train=2, n_val=6)
    profile = ExportProfile(
        triton=TritonSettings(max_queue_delay_us=0, warmup_tile=32),
        parity=ParitySettings(val_tiles=0, random_tiles=2, tile=32, batch=2),
    )
    repo = tmp_path / "repo"
    for family, arch, seed in (("unet", "unet", 0), ("cyclegan", "resnet", 1)):
        ckpt = _checkpoint(tmp_path / family / "last.pt", family, arch, seed)
        export_checkpoint(ckpt, repo, profile)
    models = sorted(p.name for p in repo.iterdir() if not p.name.startswith("."))
    assert models == ["cyclegan_tiny", "unet_tiny"]

    out = tmp_path / "out"
    result = run_compare(
        CompareOptions(
            val_set=tmp_path / "demo" / "paired.zarr",
            repo=repo,
            out=out,
            concurrency=[],
            baseline="unet_tiny",
            n_boot=200,
            parity_tiles=2,
        )
    )
    assert result.complete
    doc = json.loads((out / "results.json").read_text())
    vs = open_val_set(tmp_path / "demo" / "paired.zarr")
    a, b = vs.get(range(len(vs)))
    for name in models:
        session = ort.InferenceSession(
            str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        # one tile per run, as compare sent them (batch size 1): the same batch composition
        inp = session.get_inputs()[0].name
        local = np.concatenate([session.run(None, {inp: a[i : i + 1]})[0] for i in range(len(a))])
        expected = float(np.mean(ssim(local, b)))
        got = doc["quality"]["models"][name]["mean"]["ssim"]["value"]
        assert got == pytest.approx(expected, rel=1e-12), name
        assert doc["parity"][name]["ok"] is True, doc["parity"][name]
        assert doc["models"][name]["family"] == name.split("_")[0]
    assert doc["val_set"]["kind"] == "store" and doc["val_set"]["manifest_hash"]
    assert "vs_baseline" in doc["quality"]["models"]["cyclegan_tiny"]
    assert {"results.json", "per_tile.csv", "report.md", "examples.png"} <= {
        p.name for p in out.iterdir()
    }
