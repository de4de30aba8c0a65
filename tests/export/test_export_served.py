"""An exported model served by the real Triton server: same answers, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stainbench.errors import ServingError
from stainbench.export.exporter import export_checkpoint
from stainbench.export.onnx import OnnxTileModel
from stainbench.export.profile import ExportProfile, ParitySettings, TritonSettings


@pytest.mark.slow
def test_served_model_matches_in_process_and_rejects_bad_sizes(
    tmp_path: Path, checkpoint_factory
) -> None:
    from stainbench.serving import TritonClient, TritonServer

    ckpt = checkpoint_factory("unet")
    prof = ExportProfile(
        triton=TritonSettings(warmup_tile=16, max_batch_size=4),
        parity=ParitySettings(tile=16),
    )
    repo = tmp_path / "repo"
    export_checkpoint(ckpt, repo, prof)
    second = export_checkpoint(ckpt, repo, prof)  # a new version; Triton serves the newest
    assert second.version == 2
    local = OnnxTileModel(second.version_dir / "model.onnx")
    tiles = np.random.default_rng(0).integers(0, 256, (3, 24, 40, 3), dtype=np.uint8)
    with TritonServer(repo, timeout=60) as server, TritonClient(server.grpc_url) as client:
        assert client.is_ready("unet_demo")
        assert np.array_equal(client.infer("unet_demo", tiles[:1]), local.run(tiles[:1]))
        batch = client.infer("unet_demo", tiles)
        assert batch.shape == tiles.shape and batch.dtype == np.uint8
        assert np.abs(batch.astype(int) - local.run(tiles)).max() <= 1
        with pytest.raises(
            ServingError,
            match="unet_demo: tile height and width must be positive multiples of 8, got 20x40",
        ):
            client.infer("unet_demo", tiles[:, :20])
        params = client.config("unet_demo")["parameters"]
        assert params["stainbench.size_multiple"]["string_value"] == "8"


@pytest.mark.slow
def test_throughput_profile_serves_two_instances_side_by_side(
    tmp_path: Path, checkpoint_factory, repo_root: Path
) -> None:
    """export/cpu-throughput.yaml: Triton loads two instances; concurrent requests all answer
    as the model does in-process."""
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from stainbench.export.profile import load_profile
    from stainbench.serving import TritonClient, TritonServer

    base = load_profile(repo_root / "export" / "cpu-throughput.yaml")
    prof = replace(
        base,
        triton=replace(base.triton, warmup_tile=16),
        parity=replace(base.parity, tile=16, val_tiles=2),
    )
    result = export_checkpoint(checkpoint_factory("unet"), tmp_path / "repo", prof)
    local = OnnxTileModel(result.version_dir / "model.onnx")
    tiles = np.random.default_rng(1).integers(0, 256, (8, 2, 16, 24, 3), dtype=np.uint8)
    with TritonServer(tmp_path / "repo", timeout=60) as server:
        with TritonClient(server.grpc_url) as client:
            groups = client.config("unet_demo")["instance_group"]
            assert [(g["count"], g["kind"]) for g in groups] == [(2, "KIND_CPU")]

        def ask(batch: np.ndarray) -> np.ndarray:
            with TritonClient(server.grpc_url) as c:
                return c.infer("unet_demo", batch)

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, tiles))
    for batch, got in zip(tiles, answers, strict=True):
        assert got.shape == batch.shape and got.dtype == np.uint8
        assert np.abs(got.astype(int) - local.run(batch)).max() <= 1
