"""Pure parts of the latency engine on synthetic timings with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from stainbench.bench.latency import (
    LatencyPoint,
    LatencySettings,
    Window,
    is_stable,
    server_split,
    summarize_latencies,
)
from stainbench.errors import BenchmarkError
from stainbench.serving.client import ModelStatistics


def test_percentiles_of_1_to_100() -> None:
    s = summarize_latencies(np.arange(1, 101, dtype=float)[::-1])  # order must not matter
    assert s.count == 100
    assert s.mean == pytest.approx(50.5)
    assert (s.min, s.max) == (1.0, 100.0)
    # linear interpolation between order statistics: rank = q/100 * (n - 1)
    assert s.p50 == pytest.approx(50.5)
    assert s.p90 == pytest.approx(90.1)
    assert s.p95 == pytest.approx(95.05)
    assert s.p99 == pytest.approx(99.01)
    assert s.std == pytest.approx(math.sqrt((100**2 - 1) / 12))


def test_percentiles_of_a_constant_and_of_nothing() -> None:
    s = summarize_latencies([7.0] * 13)
    assert (s.p50, s.p99, s.mean, s.std) == (7.0, 7.0, 7.0, 0.0)
    empty = summarize_latencies([])
    assert empty.count == 0 and math.isnan(empty.p50)


def test_a_tail_moves_p99_not_p50() -> None:
    samples = [10.0] * 95 + [100.0] * 5  # 5 % slow requests
    s = summarize_latencies(samples)
    assert s.p50 == 10.0 and s.p90 == 10.0
    assert s.p99 == 100.0
    assert s.mean == pytest.approx(14.5)


def _w(rps: float, p95: float) -> Window:
    return Window(
        duration_s=2.0,
        requests=int(rps * 2),
        throughput_rps=rps,
        p95_ms=p95,
        mean_ms=p95 / 1.2,
        client_cpu=0.1,
    )


def test_stability_needs_three_agreeing_windows() -> None:
    assert not is_stable([_w(100, 10), _w(100, 10)])
    assert is_stable([_w(100, 10), _w(105, 10.5), _w(109.9, 10.99)])
    # throughput spread 11 % > 10 %
    assert not is_stable([_w(100, 10), _w(105, 10), _w(111, 10)])
    # p95 spread too large even though throughput agrees
    assert not is_stable([_w(100, 10), _w(100, 12), _w(100, 10)])
    # only the last three count
    assert is_stable([_w(10, 99), _w(100, 10), _w(101, 10), _w(102, 10)])
    # an empty window is never stable
    assert not is_stable([_w(0, 10), _w(0, 10), _w(0, 10)])
    assert not is_stable([_w(100, math.nan)] * 3)
    assert is_stable([_w(100, 10), _w(119, 10)], count=2, tolerance=0.2)


def test_server_split_per_request() -> None:
    before = ModelStatistics(
        "m",
        success_count=10,
        success_ns=10**9,
        queue_ns=10**8,
        inference_count=10,
        execution_count=10,
        batch_executions={1: 10},
    )
    after = ModelStatistics(
        "m",
        success_count=14,  # 4 requests
        success_ns=10**9 + 4 * 12_000_000,  # 12 ms each
        queue_ns=10**8 + 4 * 1_000_000,  # 1 ms each
        compute_input_ns=4 * 500_000,
        compute_infer_ns=4 * 10_000_000,
        compute_output_ns=4 * 250_000,
        inference_count=18,  # 8 tiles
        execution_count=12,  # in 2 executions
        batch_executions={1: 10, 4: 2},
    )
    split = server_split(after - before)
    assert split.requests == 4
    assert split.queue == pytest.approx(1.0)
    assert split.compute_input == pytest.approx(0.5)
    assert split.compute_infer == pytest.approx(10.0)
    assert split.compute_output == pytest.approx(0.25)
    assert split.total == pytest.approx(12.0)
    assert split.overhead == pytest.approx(0.25)
    assert split.batch == pytest.approx(4.0)
    assert (after - before).batch_executions == {4: 2}
    assert math.isnan(server_split(before - before).queue)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "concurrency must be >= 1"),
        ({"batch_size": 0}, "batch size must be >= 1"),
        ({"window_s": 0}, "window must be > 0"),
        ({"stable_windows": 5, "max_windows": 3}, "stable windows"),
        ({"tolerance": 0}, "tolerance must be > 0"),
    ],
)
def test_settings_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(BenchmarkError, match=message):
        LatencySettings(**kwargs).check()


def test_warmup_default_scales_with_concurrency() -> None:
    assert LatencySettings(concurrency=1).warmup == 4
    assert LatencySettings(concurrency=8).warmup == 16
    assert LatencySettings(warmup_requests=0).warmup == 0


def test_point_to_dict_is_json_with_nan_as_null() -> None:
    point = LatencyPoint(
        model="m",
        url="grpc://127.0.0.1:1",
        protocol="grpc",
        concurrency=2,
        batch_size=1,
        tile_shape=(256, 256, 3),
        stable=True,
        windows_measured=3,
        duration_s=6.0,
        requests=6,
        tiles=6,
        throughput_rps=1.0,
        throughput_tiles_s=1.0,
        latency_ms=summarize_latencies([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        server_ms=server_split(ModelStatistics("m")),
        client_cpu=0.9,
        server_cpu=None,
        cpu_count=2,
        windows=[_w(1, 5)] * 3,
        samples_ms=np.arange(6.0),
    )
    d = json.loads(json.dumps(point.to_dict(samples=True), allow_nan=False))
    assert d["latency_ms"]["p50"] == 3.5
    assert d["server_ms"]["queue"] is None
    assert d["client_bound"] is True  # 0.9 cores > 0.8
    assert d["samples_ms"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert d["tile_shape"] == [256, 256, 3]
    assert "samples_ms" not in point.to_dict()
