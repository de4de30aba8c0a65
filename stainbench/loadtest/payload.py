"""Tiles and the request payloads built from them, once per process, before any load is sent.

A payload is one inference request: ``batch_size`` consecutive tiles, uint8 ``(B, H, W, 3)``
RGB in 0..255, sent as the served model's ``INPUT`` (docs/CONTRACTS.md section 3). The HTTP
body uses the KServe v2 binary-tensor extension (a JSON header followed by the raw bytes),
built with :meth:`tritonclient.http.InferenceServerClient.generate_request_body`; the gRPC
inputs are tritonclient ``InferInput`` objects with the data already attached.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stainbench.errors import DataError

INPUT_NAME = "INPUT"
OUTPUT_NAME = "OUTPUT"


def load_tiles(path: str | Path) -> np.ndarray:
    """Read a tile set written by ``stainbench loadtest`` (or by hand) from a ``.npy`` file.

    Returns uint8 ``(N, H, W, 3)`` with ``N >= 1``; raises :class:`DataError` (one line, naming
    the file) for a missing file, a pickle, another dtype or shape, or an empty set.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tile file {path} does not exist (write one with 'stainbench loadtest')")
    try:
        tiles = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"tile file {path} is not a readable .npy array: {exc}") from None
    check_tiles(tiles, str(path))
    return tiles


def check_tiles(tiles: np.ndarray, source: str) -> None:
    """Raise :class:`DataError` unless ``tiles`` is a non-empty uint8 ``(N, H, W, 3)`` array."""
    if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise DataError(
            f"tiles in {source} must be uint8 (N, H, W, 3) RGB, got {tiles.dtype} {tiles.shape}"
        )
    if tiles.shape[0] == 0 or tiles.shape[1] == 0 or tiles.shape[2] == 0:
        raise DataError(f"tile set {source} is empty (shape {tiles.shape}): give at least one tile")


def batches(tiles: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split ``tiles`` (N, H, W, 3) into ``ceil(N / batch_size)`` contiguous batches.

    The last batch is filled up from the start of the set, so every batch has exactly
    ``batch_size`` tiles (uint8 ``(batch_size, H, W, 3)``, C-contiguous).
    """
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    n = tiles.shape[0]
    count = -(-n // batch_size)
    out = []
    for i in range(count):
        idx = [(i * batch_size + j) % n for j in range(batch_size)]
        out.append(np.ascontiguousarray(tiles[idx]))
    return out


@dataclass(frozen=True)
class HttpPayload:
    """One HTTP inference request body: ``body`` = JSON header (``header_length`` bytes) + data."""

    body: bytes
    header_length: int
    shape: tuple[int, ...]

    @property
    def output_nbytes(self) -> int:
        """Bytes of the uint8 ``OUTPUT`` tensor expected back (same shape as the input)."""
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class GrpcPayload:
    """One gRPC inference request: tritonclient ``InferInput`` / ``InferRequestedOutput``."""

    inputs: list[Any]
    outputs: list[Any]
    shape: tuple[int, ...]

    @property
    def output_nbytes(self) -> int:
        """Bytes of the uint8 ``OUTPUT`` tensor expected back (same shape as the input)."""
        return int(np.prod(self.shape))


def http_payload(batch: np.ndarray, input_name: str = INPUT_NAME) -> HttpPayload:
    """Build the binary-tensor HTTP body for one uint8 ``(B, H, W, 3)`` batch."""
    import tritonclient.http as httpclient

    inp = httpclient.InferInput(input_name, list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch, binary_data=True)
    out = httpclient.InferRequestedOutput(OUTPUT_NAME, binary_data=True)
    body, header_length = httpclient.InferenceServerClient.generate_request_body([inp], [out])
    return HttpPayload(
        body=bytes(body), header_length=int(header_length or 0), shape=tuple(batch.shape)
    )


def grpc_payload(batch: np.ndarray, input_name: str = INPUT_NAME) -> GrpcPayload:
    """Build the gRPC inputs for one uint8 ``(B, H, W, 3)`` batch."""
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput(input_name, list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch)
    out = grpcclient.InferRequestedOutput(OUTPUT_NAME)
    return GrpcPayload(inputs=[inp], outputs=[out], shape=tuple(batch.shape))
