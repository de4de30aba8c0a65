"""Pieces of the load test that need no server: options, payloads, tiles, CSV parsing."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from stainbench.errors import ConfigError, DataError
from stainbench.loadtest.client import (
    InferenceFailed,
    check_http_response,
    triton_error_message,
)
from stainbench.loadtest.options import ModelMix, grpc_target
from stainbench.loadtest.payload import batches, http_payload, load_tiles
from stainbench.loadtest.runner import LoadTestSpec, parse_run_time, validate_spec
from stainbench.loadtest.stats import read_summary, slo_violations
from stainbench.loadtest.tiles import prepare_tiles


def test_model_mix_parses_weights_and_draws_in_proportion() -> None:
    mix = ModelMix.parse(" unet_demo:3 , reinhard ")
    assert mix.names == ("unet_demo", "reinhard")
    assert mix.weights == (3.0, 1.0)
    assert str(mix) == "unet_demo:3,reinhard:1"
    rng = random.Random(0)
    draws = [mix.pick(rng) for _ in range(4000)]
    share = draws.count("unet_demo") / len(draws)
    assert 0.72 < share < 0.78


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "no model"),
        ("a b", "bad model name"),
        ("a:x", "bad weight"),
        ("a:0", "must be > 0"),
        ("a:-1", "must be > 0"),
        ("a,a", "twice"),
    ],
)
def test_model_mix_rejects_bad_text(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        ModelMix.parse(text)


def test_grpc_target_accepts_urls_and_rejects_missing_port() -> None:
    assert grpc_target("grpc://127.0.0.1:8001") == "127.0.0.1:8001"
    assert grpc_target("127.0.0.1:8001/") == "127.0.0.1:8001"
    with pytest.raises(ConfigError, match="HOST:PORT"):
        grpc_target("localhost")


@pytest.mark.parametrize(
    ("text", "seconds"), [("20s", 20), ("2m", 120), ("1h30m", 5400), ("90", 90)]
)
def test_run_time_parses_locust_durations(text: str, seconds: int) -> None:
    assert parse_run_time(text) == seconds


@pytest.mark.parametrize("text", ["0s", "soon", "", "-5"])
def test_run_time_rejects_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError, match="run-time"):
        parse_run_time(text)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"users": 0}, "--users"),
        ({"spawn_rate": 0.0}, "--spawn-rate"),
        ({"workers": -1}, "--workers"),
        ({"workers": 5, "users": 2}, "idle workers"),
        ({"max_p95_ms": -1.0}, "--max-p95-ms"),
        ({"max_p95_ms": math.nan}, "--max-p95-ms"),
        ({"max_failure_rate": 1.5}, "--max-failure-rate"),
        ({"protocol": "udp"}, "--protocol"),
        ({"url": "http://127.0.0.1:1", "repo": Path("r")}, "not both"),
        ({"batch_size": 0}, "--batch-size"),
        ({"locustfile": Path("/no/such/locustfile.py")}, "locustfile"),
    ],
)
def test_spec_validation_rejects_bad_options(changes: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        validate_spec(LoadTestSpec(**changes))


def test_http_payload_is_a_binary_tensor_body_with_the_tiles(tmp_path: Path) -> None:
    import tritonclient.http as httpclient

    tiles = np.random.default_rng(0).integers(0, 256, (5, 8, 12, 3), dtype=np.uint8)
    parts = batches(tiles, 2)
    assert [p.shape[0] for p in parts] == [2, 2, 2]
    np.testing.assert_array_equal(parts[2][1], tiles[0])  # the last batch wraps around
    payload = http_payload(parts[0])
    header = json.loads(payload.body[: payload.header_length])
    assert header["inputs"][0] == {
        "name": "INPUT",
        "shape": [2, 8, 12, 3],
        "datatype": "UINT8",
        "parameters": {"binary_data_size": 2 * 8 * 12 * 3},
    }
    assert payload.body[payload.header_length :] == parts[0].tobytes()
    assert payload.output_nbytes == 2 * 8 * 12 * 3
    # A well-formed answer passes; a short, mistyped or error answer is a failure.
    out_header = json.dumps(
        {"outputs": [{"name": "OUTPUT", "datatype": "UINT8", "shape": [2, 8, 12, 3],
                      "parameters": {"binary_data_size": 576}}]}
    ).encode()  # fmt: skip
    body = out_header + bytes(576)
    assert check_http_response(200, str(len(out_header)), body, payload) == len(body)
    with pytest.raises(InferenceFailed, match="bytes, expected 576"):
        check_http_response(200, str(len(out_header)), body[:-1], payload)
    with pytest.raises(InferenceFailed, match="HTTP 400: bad tile"):
        check_http_response(400, None, b'{"error":"bad tile"}', payload)
    assert triton_error_message(502, b"<html>") == "HTTP 502: <html>"
    assert httpclient  # the body was built by tritonclient's own helper


def test_load_tiles_rejects_wrong_files(tmp_path: Path) -> None:
    np.save(tmp_path / "f32.npy", np.zeros((2, 8, 8, 3), np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((0, 8, 8, 3), np.uint8))
    np.save(tmp_path / "gray.npy", np.zeros((2, 8, 8), np.uint8))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="does not exist"):
        load_tiles(tmp_path / "missing.npy")
    with pytest.raises(DataError, match="uint8"):
        load_tiles(tmp_path / "f32.npy")
    with pytest.raises(DataError, match="empty"):
        load_tiles(tmp_path / "empty.npy")
    with pytest.raises(DataError, match="uint8"):
        load_tiles(tmp_path / "gray.npy")
    with pytest.raises(DataError, match="not a readable"):
        load_tiles(tmp_path / "junk.npy")


def _write_store(path: Path, val_a: np.ndarray) -> Path:
    """A real paired stainbench store (zarr v3) whose val/A tiles are ``val_a``."""
    from stainbench.data.store import create_store, finalize_store

    group = create_store(path, "paired")
    for split in ("train", "val"):
        for domain in ("A", "B"):
            group.create_array(f"{split}/{domain}", data=val_a)
    finalize_store(group, {"sources": [], "split": {}}, None)
    return path


def test_tiles_from_a_real_zarr_store_become_a_npy_file(tmp_path: Path) -> None:
    val_a = np.random.default_rng(1).integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    _write_store(tmp_path / "demo" / "paired.zarr", val_a)
    tiles = prepare_tiles(tmp_path / "demo", tmp_path / "out", max_tiles=2)  # finds paired.zarr
    assert (tiles.count, tiles.height, tiles.width) == (2, 16, 24)
    assert tiles.path == (tmp_path / "out" / "tiles.npy").resolve()
    np.testing.assert_array_equal(np.load(tiles.path), val_a[:2])
    with pytest.raises(DataError, match="no split"):
        prepare_tiles(tmp_path / "demo", tmp_path / "out", split="nope")
    with pytest.raises(DataError, match="does not exist"):
        prepare_tiles(tmp_path / "nothing.zarr", tmp_path / "out")
    _write_store(tmp_path / "wide.zarr", val_a.astype(np.uint16))
    with pytest.raises(DataError, match="uint16 tiles"):
        prepare_tiles(tmp_path / "wide.zarr", tmp_path / "out")


def _write_stats(prefix: Path, rows: list[list[object]]) -> None:
    header = (
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
        "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
        "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
    )
    lines = [header] + [",".join(map(str, r)) for r in rows]
    Path(f"{prefix}_stats.csv").write_text("\n".join(lines) + "\n")


def test_summary_and_objectives_from_a_stats_file(tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    pct = [10, 11, 12, 13, 20, 40, 50, 60, 70, 70, 70]
    _write_stats(
        prefix,
        [
            ["HTTP", "a", 100, 0, 10, 12.5, 5, 70, 3072, 9.5, 0.0, *pct],
            ["HTTP", "b", 50, 5, 10, 12.5, 5, 70, 3072, 4.5, 0.5, *pct],
            ["", "Aggregated", 150, 5, 10, 12.5, 5, 70, 3072, 14.0, 0.5, *pct],
        ],
    )
    summary = read_summary(prefix)
    assert [e.name for e in summary.endpoints] == ["a", "b"]
    assert summary.aggregated.requests == 150
    assert summary.aggregated.p95_ms == 40
    assert slo_violations(summary, max_p95_ms=50, max_failure_rate=0.2) == []
    missed = slo_violations(summary, max_p95_ms=30, max_failure_rate=0.05)
    assert "all models: p95 40 ms > 30 ms" in missed
    assert any("model 'b': failure rate 10.00%" in m for m in missed)
    assert not any("model 'a': failure" in m for m in missed)


def test_summary_refuses_missing_or_unfinished_files(tmp_path: Path) -> None:
    from stainbench.errors import BenchmarkError

    with pytest.raises(BenchmarkError, match="missing"):
        read_summary(tmp_path / "none")
    _write_stats(tmp_path / "cut", [])
    with pytest.raises(BenchmarkError, match="Aggregated"):
        read_summary(tmp_path / "cut")


def test_without_tiles_the_demo_store_is_used_or_a_hint_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="run 'make demo'"):
        prepare_tiles(None, tmp_path / "out")
    val_a = np.full((2, 16, 16, 3), 7, np.uint8)
    _write_store(tmp_path / "demo_out" / "data" / "paired.zarr", val_a)
    tiles = prepare_tiles(None, tmp_path / "out")
    assert tiles.source == "demo_out/data/paired.zarr" and tiles.count == 2


def test_a_saturated_load_generator_is_reported(tmp_path: Path) -> None:
    from stainbench.loadtest.runner import locust_warnings

    (tmp_path / "locust.log").write_text("INFO: All users spawned\n")
    assert locust_warnings(tmp_path) == []
    (tmp_path / "locust_worker1.log").write_text(
        "WARNING/locust.runners: CPU usage above 90%! This may constrain your throughput\n"
    )
    assert len(locust_warnings(tmp_path)) == 1
    assert "--workers" in locust_warnings(tmp_path)[0]


@pytest.mark.parametrize(
    ("url", "protocol", "expected"),
    [
        (None, None, "http"),
        ("grpc://127.0.0.1:8001", None, "grpc"),
        ("http://127.0.0.1:8000", None, "http"),
        ("127.0.0.1:8001", "grpc", "grpc"),
    ],
)
def test_protocol_follows_the_url_unless_given(
    url: str | None, protocol: str | None, expected: str
) -> None:
    from stainbench.loadtest.runner import resolve_protocol

    assert resolve_protocol(LoadTestSpec(url=url, protocol=protocol)) == expected  # type: ignore[arg-type]


def test_exact_percentiles_from_raw_latency_files_drive_the_objectives(tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    pct = [10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10]  # Locust's buckets: all "10 ms"
    _write_stats(
        prefix,
        [
            ["HTTP", "a", 100, 0, 10, 10, 9, 11, 3072, 9.5, 0.0, *pct],
            ["", "Aggregated", 100, 0, 10, 10, 9, 11, 3072, 9.5, 0.0, *pct],
        ],
    )
    raw = tmp_path / "latencies"
    raw.mkdir()
    ms = np.linspace(9.0, 10.9, 100)
    for i, part in enumerate((ms[:60], ms[60:])):  # two processes
        rows = "".join(f"a,{v!r},1\n" for v in part)
        (raw / f"latencies_{i}.csv").write_text("name,ms,ok\n" + rows)
    summary = read_summary(prefix, raw_dir=raw)
    agg = summary.aggregated
    assert agg.percentiles_ms["95%"] == 10
    assert agg.p95_ms == pytest.approx(np.percentile(ms, 95))
    assert summary.endpoints[0].raw_percentiles_ms == agg.raw_percentiles_ms
    assert slo_violations(summary, max_p95_ms=10.5, max_failure_rate=None) == [
        f"all models: p95 {agg.p95_ms:g} ms > 10.5 ms",
        f"model 'a': p95 {agg.p95_ms:g} ms > 10.5 ms",
    ]
    # Without raw files the bucketed value is used.
    assert read_summary(prefix, raw_dir=tmp_path / "none").aggregated.p95_ms == 10
