"""The latency engine against the real tritonserver and a model of known compute time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stainbench.bench.latency import LatencySettings, measure_latency, sweep_concurrency
from stainbench.errors import BenchmarkError, ServingError
from stainbench.serving.server import TritonServer
from stainbench.serving.testing import write_numpy_model

DELAY_MS = 20.0  # the model sleeps this long per execution (one dynamic batch)


@pytest.fixture(scope="module")
def sleepy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("latency_repo")
    write_numpy_model(repo, "sleepy", "invert", delay_ms=DELAY_MS, max_batch_size=8)
    write_numpy_model(repo, "reject", "fail")
    with TritonServer(repo, timeout=60) as server:
        yield server


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)


FAST = LatencySettings(window_s=0.5, min_window_requests=5, max_windows=6, warmup_requests=4)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_measure_against_known_compute_time(
    sleepy_server: TritonServer, tiles: np.ndarray, protocol: str
) -> None:
    url = sleepy_server.grpc_url if protocol == "grpc" else sleepy_server.http_url
    points = sweep_concurrency(url, "sleepy", tiles, (1, 4), FAST, server_pid=sleepy_server.pid)
    one, four = points
    for p in points:
        assert p.protocol == protocol and p.model == "sleepy"
        assert 3 <= p.windows_measured <= FAST.max_windows
        assert p.requests == p.latency_ms.count == p.samples_ms.size > 0
        assert p.throughput_rps == pytest.approx(p.requests / p.duration_s)
        # the model sleeps DELAY_MS per execution: the server sees at least that much
        assert DELAY_MS <= p.server_ms.compute_infer < DELAY_MS + 40
        assert p.latency_ms.p50 >= DELAY_MS
        assert p.latency_ms.min <= p.latency_ms.p50 <= p.latency_ms.p95 <= p.latency_ms.max
        # client latency contains the server's time for the request
        assert p.latency_ms.mean >= p.server_ms.total * 0.9
        assert 0 < p.client_cpu < 2.5 and p.server_cpu is not None and p.server_cpu > 0
        json.dumps(p.to_dict(samples=True), allow_nan=False)
    # closed loop at concurrency 1: one request at a time, batch 1, ~1 / latency throughput
    assert one.server_ms.batch == pytest.approx(1.0)
    assert one.throughput_rps == pytest.approx(1000.0 / one.latency_ms.mean, rel=0.25)
    # concurrency 4: the dynamic batcher groups requests, so throughput grows
    assert four.server_ms.batch > 1.5
    assert four.throughput_tiles_s > 1.5 * one.throughput_tiles_s


def test_batch_size_counts_tiles(sleepy_server: TritonServer, tiles: np.ndarray) -> None:
    settings = LatencySettings(
        batch_size=3, window_s=0.3, min_window_requests=3, max_windows=3, warmup_requests=2
    )
    p = measure_latency(sleepy_server.grpc_url, "sleepy", tiles, settings)
    assert p.tiles == 3 * p.requests
    assert p.throughput_tiles_s == pytest.approx(3 * p.throughput_rps)
    assert p.server_ms.batch == pytest.approx(3.0)
    assert p.tile_shape == (64, 64, 3)


def test_failing_requests_raise_one_line(sleepy_server: TritonServer, tiles: np.ndarray) -> None:
    with pytest.raises(ServingError, match=r"model 'reject' .*rejects every request") as info:
        measure_latency(sleepy_server.grpc_url, "reject", tiles, FAST)
    assert "\n" not in str(info.value)
    with pytest.raises(ServingError, match=r"model 'nope' is unknown"):
        measure_latency(sleepy_server.http_url, "nope", tiles, FAST)


def test_bad_tiles(sleepy_server: TritonServer) -> None:
    with pytest.raises(BenchmarkError, match=r"uint8 \(N, H, W, 3\)"):
        measure_latency(sleepy_server.grpc_url, "sleepy", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(BenchmarkError, match=r"uint8 \(N, H, W, 3\)"):
        measure_latency(sleepy_server.grpc_url, "sleepy", np.zeros((0, 8, 8, 3), np.uint8))


def test_unreachable_server(tmp_path: Path, tiles: np.ndarray) -> None:
    from stainbench.serving.runtime import free_ports

    (port,) = free_ports(1)
    with pytest.raises(ServingError, match="cannot reach the Triton server"):
        measure_latency(f"grpc://127.0.0.1:{port}", "sleepy", tiles, FAST)
