"""Fixtures for the load and reliability tests: a real repository of tiny python-backend
models, the real tritonserver on free loopback ports, and tile files written by the tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from stainbench.serving.server import TritonServer
from stainbench.serving.testing import write_numpy_model

#: Side of the fixed-size model's tiles: larger tiles are refused by Triton.
FIXED_SIDE = 32


def write_fixed_size_model(repo: Path, name: str, side: int) -> Path:
    """An ``invert`` model whose config accepts only ``side x side`` tiles."""
    model_dir = write_numpy_model(repo, name, "invert", max_batch_size=4)
    config = mc.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), config)
    for tensor in (*config.input, *config.output):
        del tensor.dims[:]
        tensor.dims.extend([side, side, 3])
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    return model_dir


@pytest.fixture(scope="session")
def lt_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``invert`` (255 - x, batch <= 8), ``identity`` (batch <= 4), ``small32`` (32x32 only)."""
    repo = tmp_path_factory.mktemp("lt_repo")
    write_numpy_model(repo, "invert", "invert")
    write_numpy_model(repo, "identity", "identity", max_batch_size=4)
    write_fixed_size_model(repo, "small32", FIXED_SIDE)
    return repo


@pytest.fixture(scope="session")
def lt_server(lt_repo: Path) -> Iterator[TritonServer]:
    """The real tritonserver on the test repository, shared by the tests that only talk to
    it (the fault tests start their own)."""
    with TritonServer(lt_repo, timeout=90) as server:
        yield server


@pytest.fixture(scope="session")
def tiles_npy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 random uint8 RGB tiles of 32x32 in a .npy file."""
    path = tmp_path_factory.mktemp("tiles") / "tiles.npy"
    rng = np.random.default_rng(7)
    np.save(path, rng.integers(0, 256, (16, FIXED_SIDE, FIXED_SIDE, 3), dtype=np.uint8))
    return path
