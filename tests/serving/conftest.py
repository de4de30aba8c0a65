"""Fixtures: a real model repository of tiny python-backend models and a real server on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stainbench.serving.server import TritonServer
from stainbench.serving.testing import write_numpy_model


@pytest.fixture(scope="session")
def invert_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with ``invert`` (255 - x), ``identity`` and ``reject`` (fails requests)."""
    repo = tmp_path_factory.mktemp("repo")
    write_numpy_model(repo, "invert", "invert")
    write_numpy_model(repo, "identity", "identity", max_batch_size=4)
    write_numpy_model(repo, "reject", "fail")
    return repo


@pytest.fixture(scope="session")
def server(invert_repo: Path) -> Iterator[TritonServer]:
    """One real tritonserver on free loopback ports for the whole session."""
    with TritonServer(invert_repo, timeout=60) as srv:
        yield srv
