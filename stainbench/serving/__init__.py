"""Serving: start and stop the real ``tritonserver`` and talk to it.

- :class:`~stainbench.serving.server.TritonServer`: the server from the ``nvidia-pytriton``
  wheel as a context manager (free loopback ports, readiness, clean shutdown).
- :class:`~stainbench.serving.client.TritonClient`: a thin gRPC/HTTP client sending uint8
  tiles ``(B, H, W, 3)`` and reading the model statistics.

Both are imported lazily so that ``import stainbench.serving`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stainbench.serving.client import ModelInfo, ModelStatistics, TritonClient
    from stainbench.serving.server import TritonServer

__all__ = ["ModelInfo", "ModelStatistics", "TritonClient", "TritonServer"]


def __getattr__(name: str) -> Any:
    if name == "TritonServer":
        from stainbench.serving.server import TritonServer

        return TritonServer
    if name in ("TritonClient", "ModelInfo", "ModelStatistics"):
        from stainbench.serving import client

        return getattr(client, name)
    raise AttributeError(f"module 'stainbench.serving' has no attribute {name!r}")
