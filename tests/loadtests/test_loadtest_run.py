"""Real Locust runs against the real server: a short clean run, the CLI end to end (gRPC,
distributed), and the CLI's one-line refusals before any load is sent."""

from __future__ import annotations

import contextlib
import csv
import subprocess
import sys
from pathlib import Path

import pytest

from stainbench.loadtest.runner import LoadTestSpec, run_loadtest
from stainbench.loadtest.stats import read_raw_latencies
from stainbench.serving.server import TritonServer


def _stainbench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stainbench", *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=cwd,
    )


@pytest.mark.slow
def test_short_http_run_has_no_failures_and_a_summary_from_the_csv(
    lt_server: TritonServer, tiles_npy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = run_loadtest(
        LoadTestSpec(
            url=lt_server.http_url,
            models="invert:3,identity",
            tiles=tiles_npy,
            users=6,
            run_time="15s",
            max_failure_rate=0.0,
            max_p95_ms=5000,
            out=out,
        )
    )
    agg = result.summary.aggregated
    assert result.passed, result.violations
    assert agg.requests > 100 and agg.failures == 0
    assert {e.name for e in result.summary.endpoints} == {"invert", "identity"}
    invert = next(e for e in result.summary.endpoints if e.name == "invert")
    assert invert.requests > 1.5 * (agg.requests - invert.requests)  # weights 3:1
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv",
                 "locust_exceptions.csv", "report.html", "summary.json"):  # fmt: skip
        assert (out / name).is_file(), name
    # The summary is what Locust wrote in its CSV.
    with (out / "locust_stats.csv").open() as fh:
        row = next(r for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    assert int(row["Request Count"]) == agg.requests
    assert float(row["95%"]) == agg.percentiles_ms["95%"]
    # Exact percentiles from every request's raw latency, consistent with Locust's buckets.
    raw = read_raw_latencies(out / "latencies")
    assert sum(v.size for v in raw.values()) == agg.requests
    assert {k: v.size for k, v in raw.items()} == {
        e.name: e.requests for e in result.summary.endpoints
    }
    for key in ("50%", "95%"):
        locust_ms, exact_ms = agg.percentiles_ms[key], agg.raw_percentiles_ms[key]
        assert abs(exact_ms - locust_ms) <= max(2.0, 0.1 * locust_ms), (key, exact_ms, locust_ms)
    assert agg.p95_ms == agg.raw_percentiles_ms["95%"]
    # Every request and response carried the tiles: 32x32x3 uint8 plus a small JSON header.
    assert 3072 < float(row["Average Content Size"]) < 3072 + 400
    assert "Shutting down (exit code 0)" in (out / "locust.log").read_text()


@pytest.mark.slow
def test_cli_grpc_distributed_run_writes_csv_and_html(
    lt_repo: Path, tiles_npy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cli"
    proc = _stainbench(
        "loadtest", "--repo", str(lt_repo), "--models", "invert", "--tiles", str(tiles_npy),
        "--protocol", "grpc", "--users", "4", "--run-time", "6s", "--workers", "2",
        "--batch-size", "2", "--max-failure-rate", "0", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed" in proc.stdout and "2 workers" in proc.stdout
    assert (out / "locust_stats.csv").is_file() and (out / "report.html").is_file()
    assert (out / "locust_worker1.log").is_file() and (out / "locust_worker2.log").is_file()
    with (out / "locust_stats.csv").open() as fh:
        rows = {r["Name"]: r for r in csv.DictReader(fh)}
    assert rows["invert"]["Type"] == "gRPC"
    assert int(rows["invert"]["Request Count"]) > 20
    assert int(rows["invert"]["Failure Count"]) == 0
    assert float(rows["invert"]["Average Content Size"]) == 2 * 32 * 32 * 3


@pytest.mark.slow
def test_cli_exits_3_when_an_objective_is_missed(
    lt_server: TritonServer, tiles_npy: Path, tmp_path: Path
) -> None:
    # gRPC in a single Locust process: it must also exit promptly (grpcio could hang there).
    proc = _stainbench(
        "loadtest", "--url", lt_server.grpc_url, "--models", "invert", "--tiles", str(tiles_npy),
        "--users", "2", "--run-time", "3s", "--max-p95-ms", "0.001", "--out", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "SLO missed: all models: p95" in proc.stdout
    assert "gRPC" in (tmp_path / "locust_stats.csv").read_text()


@pytest.mark.slow
def test_ctrl_c_stops_locust_and_leaves_no_process(
    lt_server: TritonServer, tiles_npy: Path, tmp_path: Path
) -> None:
    import signal
    import time

    import psutil

    out = tmp_path / "interrupted"
    cmd = [
        sys.executable, "-m", "stainbench", "loadtest", "--url", lt_server.http_url,
        "--models", "invert", "--tiles", str(tiles_npy), "--users", "2", "--run-time", "120s",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "locust_stats.csv").is_file() and time.monotonic() < deadline:
            time.sleep(0.25)
        assert (out / "locust_stats.csv").is_file(), "Locust never started"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert f"interrupted; partial statistics in {out / 'locust_stats.csv'}" in stderr
    # Locust was stopped with SIGTERM and still wrote its statistics.
    assert "Aggregated" in (out / "locust_stats.csv").read_text()
    time.sleep(1.0)
    left = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if str(out) in " ".join(p.info["cmdline"] or []):
                left.append(p.pid)
    assert not left, f"processes left behind: {left}"


def _refused(proc: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def _request_counts(server: TritonServer) -> dict[str, int]:
    from stainbench.serving.client import TritonClient

    with TritonClient(server.http_url) as client:
        stats = {m: client.statistics(m) for m in ("invert", "identity", "small32")}
    return {m: s.success_count + s.fail_count for m, s in stats.items()}


@pytest.mark.slow
def test_cli_refuses_bad_input_before_sending_load(
    lt_server: TritonServer, tiles_npy: Path, tmp_path: Path
) -> None:
    from stainbench.serving.runtime import free_ports

    counts_before = _request_counts(lt_server)
    base = ["loadtest", "--tiles", str(tiles_npy), "--run-time", "2s"]
    out = tmp_path / "out"
    empty = tmp_path / "empty.npy"
    import numpy as np

    np.save(empty, np.zeros((0, 32, 32, 3), np.uint8))
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    url = ["--url", lt_server.http_url, "--out", str(out)]
    _refused(_stainbench(*base, "--url", dead, "--out", str(out)), 1, "cannot reach")
    _refused(_stainbench(*base, *url, "--models", "nope"), 1, "model 'nope' is unknown")
    _refused(_stainbench("loadtest", "--tiles", str(empty), *url), 1, "is empty")
    _refused(_stainbench(*base, *url, "--max-p95-ms", "-5"), 1, "--max-p95-ms")
    _refused(_stainbench(*base, *url, "--max-failure-rate", "2"), 1, "--max-failure-rate")
    _refused(_stainbench(*base, *url, "--models", "small32", "--batch-size", "8"), 1, "exceeds")
    big = tmp_path / "big.npy"
    np.save(big, np.zeros((2, 64, 64, 3), np.uint8))
    _refused(_stainbench("loadtest", "--tiles", str(big), *url, "--models", "small32"), 1, "32x32")
    _refused(_stainbench(*base, "--users", "x"), 2, "--users")
    # Nothing reached Locust, and not a single inference request reached the server.
    assert not list(out.glob("locust_*.csv"))
    assert _request_counts(lt_server) == counts_before
