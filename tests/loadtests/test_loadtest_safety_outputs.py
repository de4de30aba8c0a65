"""``loadtest`` keeps ``--out`` to one run: a run refused by a check (server down, unknown
model, tiles that do not fit, Ctrl-C before Locust starts) leaves the previous run's files
byte-identical; a run that starts replaces all of them (no old worker log, tiles or latency
file stays beside the new ones). Real tritonserver, real Locust, a real zarr store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stainbench.errors import ConfigError, ServingError, StainbenchError
from stainbench.loadtest.runner import LoadTestInterrupted, LoadTestSpec, run_loadtest
from stainbench.serving.runtime import free_ports
from stainbench.serving.server import TritonServer

pytestmark = pytest.mark.slow


def _write_store(path: Path, tiles: np.ndarray) -> Path:
    """A real paired stainbench store (zarr v3) whose every split/domain holds ``tiles``."""
    from stainbench.data.store import create_store, finalize_store

    group = create_store(path, "paired")
    for split in ("train", "val"):
        for domain in ("A", "B"):
            group.create_array(f"{split}/{domain}", data=tiles)
    finalize_store(group, {"sources": [], "split": {}}, None)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every entry under ``folder`` (relative path -> bytes; folders as b"")."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"")
        for p in sorted(folder.rglob("*"))
    }


def test_refused_runs_keep_the_previous_run_and_a_new_run_replaces_it(
    lt_server: TritonServer, tiles_npy: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(11)
    store = _write_store(tmp_path / "a.zarr", rng.integers(0, 256, (6, 32, 32, 3), np.uint8))
    other = _write_store(tmp_path / "b.zarr", rng.integers(0, 256, (6, 16, 16, 3), np.uint8))
    out = tmp_path / "lt"
    first = run_loadtest(
        LoadTestSpec(
            url=lt_server.http_url,
            models="invert",
            tiles=store,
            users=2,
            workers=1,
            run_time="3s",
            out=out,
        )
    )
    assert first.summary.aggregated.requests > 0
    before = _snapshot(out)
    assert {"tiles.npy", "summary.json", "report.html", "locust_stats.csv"} <= set(before)
    assert "locust_worker1.log" in before and any(k.startswith("latencies/") for k in before)

    def spec(**kw: object) -> LoadTestSpec:
        settings: dict[str, object] = dict(
            url=lt_server.http_url, models="invert", tiles=other, users=2, run_time="3s", out=out
        )
        settings.update(kw)
        return LoadTestSpec(**settings)  # type: ignore[arg-type]

    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    refused: list[tuple[LoadTestSpec, type[StainbenchError], str]] = [
        (spec(url=dead), ServingError, "cannot reach the Triton server"),
        (spec(models="invert,nope"), ServingError, "model 'nope' is unknown"),
        (spec(models="small32"), ConfigError, "takes 32x32 tiles"),
    ]
    for options, error, message in refused:
        with pytest.raises(error, match=message):
            run_loadtest(options)
        assert _snapshot(out) == before, message  # same entries, same bytes

    def interrupt(stage: str) -> None:
        if stage == "checking models":
            raise KeyboardInterrupt

    with pytest.raises(LoadTestInterrupted) as info:
        run_loadtest(spec(), on_stage=interrupt)
    assert info.value.partial_stats is None
    assert _snapshot(out) == before

    # a refused run into a folder that did not exist leaves no folder behind
    with pytest.raises(ServingError):
        run_loadtest(spec(url=dead, out=tmp_path / "new"))
    assert not (tmp_path / "new").exists()

    # a run that starts replaces every file of the previous one
    second = run_loadtest(spec(tiles=tiles_npy))
    after = _snapshot(out)
    assert "tiles.npy" not in after and "locust_worker1.log" not in after
    latencies = [k for k in after if k.startswith("latencies/")]
    assert len(latencies) == 1, latencies  # one Locust process this time
    assert after["summary.json"] != before["summary.json"]
    assert set(second.files) >= {"summary.json", "report.html", "locust_stats.csv"}
    assert str(second.tiles.path) == str(tiles_npy.resolve())
