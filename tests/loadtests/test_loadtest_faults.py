"""The real server killed during a Locust run, and a soak with the server's memory watched.

Traffic goes only to 127.0.0.1 and every run is bounded in time (``--run-time``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from stainbench.loadtest.runner import LoadTestResult, LoadTestSpec, run_loadtest
from stainbench.loadtest.stats import read_history
from stainbench.serving.server import TritonServer

#: Soak bound: RSS growth (tritonserver + its python stubs) from warm-up to the end, bytes.
SOAK_RSS_GROWTH_BOUND = 16 * 1024 * 1024


class Background:
    """:func:`run_loadtest` in a thread (the server must stay owned by the test's thread)."""

    def __init__(self, spec: LoadTestSpec) -> None:
        self.result: LoadTestResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(spec,), daemon=True)
        self._thread.start()

    def _run(self, spec: LoadTestSpec) -> None:
        try:
            self.result = run_loadtest(spec)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self, timeout: float) -> LoadTestResult:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the load test did not finish in time"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _wait_for_requests(prefix: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rows = read_history(prefix)
        except Exception:
            rows = []
        if rows and rows[-1]["total_requests"] >= count:
            return
        time.sleep(0.25)
    raise AssertionError(f"Locust did not reach {count} requests within {timeout} s")


def _locust_process() -> psutil.Process:
    """The Locust process this test started (through run_loadtest)."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "locust" in " ".join(child.cmdline()) and "--headless" in child.cmdline():
                return child
    raise AssertionError("no Locust process found")


@pytest.mark.slow
def test_server_killed_mid_run_failures_are_counted_and_traffic_recovers(
    lt_repo: Path, tiles_npy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "kill"
    prefix = out / "locust"
    server = TritonServer(lt_repo, models=["invert"], timeout=90).start()
    ports = {
        "http_port": server.http_port,
        "grpc_port": server.grpc_port,
        "metrics_port": server.metrics_port,
    }
    restarted: TritonServer | None = None
    try:
        # run_time is only an upper bound: Locust is stopped (SIGTERM, as Ctrl-C or a CI
        # timeout would) once traffic has flowed for a while after the restart.
        spec = LoadTestSpec(
            url=server.http_url, models="invert", tiles=tiles_npy, users=4, run_time="150s",
            request_timeout_s=5.0, out=out,
        )  # fmt: skip
        run = Background(spec)
        _wait_for_requests(prefix, 50, timeout=60)
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        server.stop()
        time.sleep(2.0)  # users hit a dead port meanwhile
        restarted = TritonServer(lt_repo, **ports, models=["invert"], timeout=90).start()
        up_at = time.time()
        after = read_history(prefix)[-1]["total_requests"]
        _wait_for_requests(prefix, int(after) + 100, timeout=60)
        time.sleep(2.0)
        _locust_process().send_signal(signal.SIGTERM)
        result = run.join(timeout=60)
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()

    agg = result.summary.aggregated
    assert agg.failures > 0, "killing the server must show up as failures"
    assert agg.requests > agg.failures
    assert result.locust_exit_code == 1  # Locust's own verdict: there were failures
    assert result.summary.failures and all(f.name == "invert" for f in result.summary.failures)
    # After the restart, requests kept succeeding: more requests, no new failures at the end.
    history = [r for r in read_history(prefix, "invert") if r["timestamp"] >= up_at + 1]
    assert len(history) >= 2, "the run must go on for a few seconds after the restart"
    first, last = history[0], history[-1]
    assert last["total_requests"] - first["total_requests"] > 20
    assert last["total_failures"] == first["total_failures"]


def _tree_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total


@pytest.mark.slow
def test_soak_server_memory_stays_bounded(lt_repo: Path, tmp_path: Path) -> None:
    tiles = np.random.default_rng(11).integers(0, 256, (32, 64, 64, 3), dtype=np.uint8)
    np.save(tmp_path / "tiles.npy", tiles)
    samples: list[tuple[float, int]] = []
    with TritonServer(lt_repo, models=["invert", "identity"], timeout=90) as server:
        assert server.pid is not None
        spec = LoadTestSpec(
            url=server.http_url, models="invert,identity", tiles=tmp_path / "tiles.npy",
            users=4, run_time="30s", batch_size=2, max_failure_rate=0.0, out=tmp_path / "soak",
        )  # fmt: skip
        run = Background(spec)
        _wait_for_requests(tmp_path / "soak" / "locust", 20, timeout=60)
        start = time.monotonic()
        while run._thread.is_alive() and time.monotonic() - start < 90:
            samples.append((time.monotonic() - start, _tree_rss(server.pid)))
            time.sleep(1.0)
        result = run.join(timeout=60)
    assert result.passed, result.violations
    assert result.summary.aggregated.requests > 1000
    warm = [rss for t, rss in samples if 5.0 <= t <= 8.0]
    late = [rss for t, rss in samples if t >= 22.0]
    assert warm and late, samples
    growth = max(late) - int(np.median(warm))
    info: dict[str, Any] = {
        "warm_mib": np.median(warm) / 2**20,
        "late_max_mib": max(late) / 2**20,
        "growth_mib": growth / 2**20,
    }
    print(f"soak RSS: {info}")
    assert growth < SOAK_RSS_GROWTH_BOUND, info
