"""A model written by the export stage, served by the real server: same output as in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stainbench.serving.client import TritonClient
from stainbench.serving.server import TritonServer


@pytest.mark.slow
def test_exported_unet_served_equals_in_process(tmp_path: Path) -> None:
    import torch

    from stainbench.export.onnx import OnnxTileModel, TileTranslator, export_onnx
    from stainbench.export.profile import TritonSettings
    from stainbench.export.triton import (
        ModelIdentity,
        build_config,
        python_model_source,
        write_model,
    )
    from stainbench.models import create_model

    torch.manual_seed(0)
    generator = create_model("unet", depth=3, base_width=4).eval()
    half = np.full(3, 127.5, np.float32)
    files = export_onnx(TileTranslator(generator, half, half, half, half, 8), tmp_path / "onnx")
    settings = TritonSettings(max_batch_size=4, max_queue_delay_us=0, warmup=False)
    config = build_config("tiny_unet", "python", settings, ModelIdentity("unet", 8, ""))
    repo = tmp_path / "repo"
    write_model(
        repo, "tiny_unet", config, {"model.onnx": files.model, "model.py": python_model_source()}
    )

    tiles = np.random.default_rng(0).integers(0, 256, (3, 32, 40, 3), dtype=np.uint8)
    expected = OnnxTileModel(files.model, threads=1).run(tiles)
    with TritonServer(repo, timeout=120) as server:
        for url in (server.grpc_url, server.http_url):
            with TritonClient(url) as client:
                assert client.config("tiny_unet")["parameters"]["stainbench.size_multiple"] == {
                    "string_value": "8"
                }
                np.testing.assert_array_equal(client.infer("tiny_unet", tiles), expected)
