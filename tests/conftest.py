"""Shared fixtures and marker handling.

- ``gpu`` tests are skipped without CUDA, ``tensorrt`` tests without an importable
  ``tensorrt`` package, each with the reason in the skip message.
- ``shared_data`` points at ``../shared/data`` (real histology images kept beside the project);
  tests that need it are skipped with a clear reason when it is absent.
- Ctrl-C tests send a real SIGINT to child processes. A shell starts background jobs
  (``make test &``, ``nohup``) with SIGINT ignored, children inherit that across exec, and
  Python then keeps ignoring it (no KeyboardInterrupt), so those tests would hang or run to
  the end. The suite therefore restores Python's SIGINT handler in this process when it finds
  SIGINT ignored; children then start with the default disposition again.
"""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # started as a background job
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_trt = importlib.util.find_spec("tensorrt") is not None
    has_gpu = _has_cuda()
    for item in items:
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(
                pytest.mark.skip(
                    reason="tensorrt is not installed (pip install "
                    "'stainbench[tensorrt]' on a GPU machine)"
                )
            )
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU on this machine"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real H&E images); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA
