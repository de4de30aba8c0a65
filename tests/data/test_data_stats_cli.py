"""'stainbench data stats': recomputation in process and on a Dask cluster, same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from stainbench.cli.main import main
from stainbench.data.ingest import IngestOptions, ingest
from stainbench.data.stats import recompute_store_stats
from stainbench.data.store import open_store
from stainbench.data.writer import write_tile_store


@pytest.fixture()
def volume_store(tmp_path: Path) -> Path:
    vol = np.random.default_rng(0).integers(0, 256, (12, 30, 28, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "v.tif", vol, photometric="rgb")
    ingest(
        tmp_path / "v.tif", tmp_path / "v.zarr", IngestOptions(layout="volume", chunks=(3, 8, 8))
    )
    return tmp_path / "v.zarr"


def test_dask_cluster_gives_identical_numbers(tmp_path: Path, volume_store: Path) -> None:
    from distributed import LocalCluster

    rng = np.random.default_rng(1)
    tiles = {
        "train": {
            "A": rng.integers(0, 9000, (9, 12, 10, 2), dtype=np.uint16),
            "B": rng.integers(0, 256, (9, 12, 10, 3), dtype=np.uint8),
        }
    }
    write_tile_store(tmp_path / "t.zarr", "paired", tiles, {})
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        for path in (volume_store, tmp_path / "t.zarr"):
            before = open_store(path).stats
            per_before = None
            if open_store(path).kind != "volume":
                per_before = open_store(path).per_image_stats("train", "A")
            result = recompute_store_stats(path, scheduler=cluster.scheduler_address)
            assert result.n_blocks > 1
            after = open_store(path).stats
            assert json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True)
            if per_before is not None:
                np.testing.assert_array_equal(
                    open_store(path).per_image_stats("train", "A"), per_before
                )


def test_cli_stats_and_unreachable_scheduler(volume_store: Path, capsys) -> None:
    before = open_store(volume_store).stats
    assert main(["data", "stats", str(volume_store)]) == 0
    assert "MB/s" in capsys.readouterr().out
    assert main(["data", "stats", str(volume_store), "--threads", "1"]) == 0
    assert open_store(volume_store).stats == before
    capsys.readouterr()
    assert main(["data", "stats", str(volume_store), "--threads", "0"]) == 2  # usage error
    assert main(["data", "stats", str(volume_store), "--scheduler", "tcp://127.0.0.1:9"]) == 1
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err


@pytest.mark.slow
def test_local_dask_cluster_from_the_cli(volume_store: Path) -> None:
    before = open_store(volume_store).stats
    assert main(["data", "stats", str(volume_store), "--scheduler", "local"]) == 0
    assert open_store(volume_store).stats == before
