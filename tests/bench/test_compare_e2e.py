"""``compare`` end to end: real ONNX models in a repository written by the export writer,
served by the real tritonserver, on a tiny folder val set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from stainbench.bench.compare import CompareOptions, run_compare
from stainbench.errors import BenchmarkError, ServingError
from stainbench.metrics import METRICS, all_metrics, metric_settings

pytestmark = pytest.mark.slow


def colour_map_onnx(scale: tuple[float, float, float], offset: tuple[float, float, float]) -> bytes:
    """A real ONNX model uint8 (B, H, W, 3) -> uint8: round(clip(x * scale + offset, 0, 255))."""
    nodes = [
        helper.make_node("Cast", ["INPUT"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xf", "scale"], ["xs"]),
        helper.make_node("Add", ["xs", "offset"], ["xo"]),
        helper.make_node("Clip", ["xo", "lo", "hi"], ["xc"]),
        helper.make_node("Round", ["xc"], ["xr"]),
        helper.make_node("Cast", ["xr"], ["OUTPUT"], to=TensorProto.UINT8),
    ]
    inits = [
        helper.make_tensor("scale", TensorProto.FLOAT, [3], list(scale)),
        helper.make_tensor("offset", TensorProto.FLOAT, [3], list(offset)),
        helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("hi", TensorProto.FLOAT, [], [255.0]),
    ]
    dims = ["B", "H", "W", 3]
    graph = helper.make_graph(
        nodes,
        "colour_map",
        [helper.make_tensor_value_info("INPUT", TensorProto.UINT8, dims)],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.UINT8, dims)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_served_model(repo: Path, name: str, onnx_bytes: bytes, size_multiple: int) -> None:
    """Write a python-flavour served model with the export stage's repository writer."""
    from stainbench.export.profile import TritonSettings
    from stainbench.export.triton import (
        ModelIdentity,
        build_config,
        python_model_source,
        write_model,
    )

    settings = TritonSettings(max_batch_size=4, max_queue_delay_us=0, warmup=False)
    cfg = build_config(name, "python", settings, ModelIdentity("unet", size_multiple, "test"))
    write_model(repo, name, cfg, {"model.onnx": onnx_bytes, "model.py": python_model_source()})


MODELS = {
    # "close": nearly the identity plus a small colour shift; "far": a strong shift
    "close": ((0.95, 0.9, 1.0), (8.0, 12.0, -4.0)),
    "far": ((0.6, 0.5, 0.7), (60.0, 40.0, 30.0)),
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for name, (scale, offset) in MODELS.items():
        write_served_model(root, name, colour_map_onnx(scale, offset), size_multiple=8)
    return root


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 32x32 tiles: targets are a known colour map of the inputs, plus noise."""
    from skimage import data

    root = tmp_path_factory.mktemp("val")
    image = data.immunohistochemistry()
    rng = np.random.default_rng(0)
    for i in range(6):
        y, x = 60 * i, 50 * i
        a = image[y : y + 32, x : x + 32]
        b = (
            np.clip(
                a * np.array([0.95, 0.9, 1.0]) + [8, 12, -4] + rng.normal(0, 3, a.shape), 0, 255
            )
            .round()
            .astype(np.uint8)
        )
        for folder, tile in (("A", a), ("B", b)):
            (root / folder).mkdir(exist_ok=True)
            Image.fromarray(tile).save(root / folder / f"tile{i}.png")
    return root


def _local(name: str, tiles: np.ndarray) -> np.ndarray:
    scale, offset = MODELS[name]
    return (
        np.clip(tiles * np.array(scale, np.float32) + np.array(offset, np.float32), 0, 255)
        .round()
        .astype(np.uint8)
    )


def test_compare_embedded_server_writes_everything(
    repo: Path, val_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    opts = CompareOptions(
        val_set=val_dir,
        repo=repo,
        out=out,
        concurrency=[],
        baseline="far",
        batch_size=2,
        n_boot=200,
        parity_tiles=3,
        example_tiles=2,
    )
    result = run_compare(opts)
    assert result.complete
    assert set(result.models) == {"close", "far"}
    names = {p.name for p in out.iterdir()}
    assert {"results.json", "per_tile.csv", "report.md", "examples.png"} <= names

    doc = json.loads((out / "results.json").read_text())
    q = doc["quality"]["models"]
    assert set(q) == {"identity", "close", "far"}
    # the served SSIM equals the in-process computation on the same tiles
    from stainbench.bench.valset import open_val_set

    vs = open_val_set(val_dir)
    a, b = vs.get(range(len(vs)))
    settings = metric_settings(np.uint8)
    for name in MODELS:
        local = all_metrics(_local(name, a), b, settings)
        for metric in ("ssim", "mae", "hist_kl", "stain_dice"):
            assert q[name]["mean"][metric]["value"] == pytest.approx(
                float(np.nanmean(local[metric])), rel=1e-9, abs=1e-12
            ), (name, metric)
    ident = all_metrics(a, b, settings)
    assert q["identity"]["mean"]["ssim"]["value"] == pytest.approx(float(ident["ssim"].mean()))
    # the model that matches the targets' generating map beats the baseline, significantly
    rel = q["close"]["vs_baseline"]["ssim"]
    assert rel["low"] > 0
    # parity with in-process ONNX Runtime: identical
    for name in MODELS:
        assert doc["parity"][name]["ok"] is True
        assert doc["parity"][name]["same_batch_max_abs_diff"] == 0
    rows = list(csv.DictReader((out / "per_tile.csv").open()))
    assert len(rows) == 18 and set(rows[0]) >= set(METRICS)
    assert doc["val_set"]["n_tiles"] == 6 and doc["settings"]["baseline"] == "far"
    assert doc["models"]["close"]["size_multiple"] == 8


@pytest.fixture(scope="module")
def server(repo: Path):  # type: ignore[no-untyped-def]
    """The real server on the repository plus two misbehaving models."""
    from stainbench.serving.server import TritonServer
    from stainbench.serving.testing import write_numpy_model

    write_numpy_model(repo, "reject", op="fail")
    write_served_model(repo, "big", colour_map_onnx((1, 1, 1), (0, 0, 0)), size_multiple=64)
    with TritonServer(repo) as srv:
        yield srv


def test_compare_bad_inputs(repo: Path, val_dir: Path, server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # nobody listens on this port: one line, and nothing written (nothing was measured)
    out = tmp_path / "down"
    opts = CompareOptions(val_set=val_dir, url="grpc://127.0.0.1:9", out=out, concurrency=[])
    with pytest.raises(ServingError, match=r"cannot reach the Triton server") as info:
        run_compare(opts)
    assert "partial results" not in str(info.value) and not out.exists()

    (tmp_path / "afile").write_text("x")
    with pytest.raises(BenchmarkError, match="is a file; pass a folder"):
        run_compare(CompareOptions(val_set=val_dir, url=server.grpc_url, out=tmp_path / "afile"))

    # an empty val set
    (tmp_path / "empty" / "A").mkdir(parents=True)
    (tmp_path / "empty" / "B").mkdir()
    with pytest.raises(BenchmarkError, match="hold no images"):
        run_compare(
            CompareOptions(
                val_set=tmp_path / "empty", url=server.grpc_url, out=tmp_path / "o2", concurrency=[]
            )
        )
    assert not (tmp_path / "o2").exists()

    def opts_for(models: list[str], out: str, **kw: object) -> CompareOptions:
        return CompareOptions(
            val_set=val_dir,
            url=server.http_url,
            protocol="http",
            models=models,
            out=tmp_path / out,
            concurrency=[],
            **kw,
        )

    with pytest.raises(BenchmarkError, match="--baseline 'unet' is not among"):
        run_compare(opts_for(["close"], "o3", baseline="unet"))
    with pytest.raises(ServingError, match="model 'nope' is unknown"):
        run_compare(opts_for(["close", "nope"], "o4"))
    with pytest.raises(BenchmarkError, match="model 'big' needs height and width multiples of 64"):
        run_compare(opts_for(["close", "big"], "o5"))
    # a model that rejects every tile: the tiles of the other model measured so far are kept
    with pytest.raises(BenchmarkError, match=r"model 'reject' rejected tile.*tile0"):
        run_compare(opts_for(["close", "reject"], "o6"))
    doc = json.loads((tmp_path / "o6" / "results.json").read_text())
    assert doc["complete"] is False and "rejected" in doc["incomplete_reason"]
    assert doc["quality"]["models"]["close"]["n_tiles"] == 1


def test_compare_ctrl_c_keeps_partial_results(val_dir: Path, server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    calls = []

    def progress(phase: str, done: int, total: int) -> None:
        calls.append((phase, done, total))
        if phase == "quality" and done >= 2:
            raise KeyboardInterrupt

    opts = CompareOptions(
        val_set=val_dir,
        url=server.grpc_url,
        models=["close", "far"],
        out=tmp_path / "cc",
        concurrency=[],
        baseline="far",
    )
    with pytest.raises(KeyboardInterrupt):
        run_compare(opts, progress=progress)
    doc = json.loads((tmp_path / "cc" / "results.json").read_text())
    assert doc["complete"] is False
    assert doc["incomplete_reason"] == "interrupted (Ctrl-C) while measuring quality"
    assert {m: v["n_tiles"] for m, v in doc["quality"]["models"].items()} == {
        "identity": 2,
        "close": 2,
        "far": 2,
    }
    assert "INCOMPLETE" in (tmp_path / "cc" / "report.md").read_text()


def test_cli_compare(repo: Path, val_dir: Path, server, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from stainbench.cli.main import main

    out = tmp_path / "cli"
    code = main(
        [
            "compare",
            "--val-set",
            str(val_dir),
            "--url",
            server.grpc_url,
            "--repo",
            str(repo),
            "--models",
            "close,far",
            "--concurrency",
            "1,2",
            "--window",
            "0.3",
            "--max-windows",
            "4",
            "--baseline",
            "identity",
            "--out",
            str(out),
            "--n-boot",
            "200",
            "--max-tiles",
            "4",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "close" in captured.out and "★" in captured.out and "Δ SSIM vs identity" in captured.out
    doc = json.loads((out / "results.json").read_text())
    assert doc["complete"] and doc["val_set"]["n_tiles"] == 4
    assert doc["parity"]["close"]["ok"] is True  # --repo with --url finds model.onnx
    lat = {(r["model"], r["concurrency"]): r for r in doc["latency"]}
    assert set(lat) == {("close", 1), ("close", 2), ("far", 1), ("far", 2)}
    for row in lat.values():
        assert row["throughput"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["detail"]["latency_ms"]["count"] >= 3
    assert {"latency_cdf.png", "throughput.png", "quality_vs_latency.png"} <= {
        p.name for p in out.iterdir()
    }
    assert "p50 ms" in captured.out

    code = main(
        [
            "compare",
            "--val-set",
            str(val_dir),
            "--url",
            "http://127.0.0.1:9",
            "--concurrency",
            "0",
            "--out",
            str(tmp_path / "down"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot reach the Triton server" in err and len(err.strip().splitlines()) == 1
    code = main(["compare", "--val-set", str(val_dir), "--concurrency", "1,x"])
    assert code == 2 and "--concurrency takes integers" in capsys.readouterr().err


def test_compare_models_not_ready(repo: Path, val_dir: Path, tmp_path: Path) -> None:
    """A server that loaded only 'close': the others are in its index but not READY."""
    from stainbench.serving.server import TritonServer

    with TritonServer(repo, models=["close"]) as only_close:
        result = run_compare(
            CompareOptions(
                val_set=val_dir,
                url=only_close.grpc_url,
                out=tmp_path / "a",
                concurrency=[],
                parity_tiles=0,
                max_tiles=2,
            )
        )
        assert list(result.models) == ["close"]
        assert any("not READY" in w and "far" in w for w in result.warnings)
        with pytest.raises(ServingError, match=r"model 'far' at .* is not ready"):
            run_compare(
                CompareOptions(
                    val_set=val_dir,
                    url=only_close.grpc_url,
                    models=["far"],
                    out=tmp_path / "b",
                    concurrency=[],
                )
            )


def test_cli_ctrl_c_writes_partial_results(val_dir: Path, server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A real SIGINT to a running 'stainbench compare' process."""
    import signal
    import subprocess
    import sys
    import time

    from stainbench.serving.client import TritonClient

    out = tmp_path / "sigint"
    with TritonClient(server.grpc_url) as client:
        before = client.statistics("far").success_count
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stainbench",
                "compare",
                "--val-set",
                str(val_dir),
                "--url",
                server.grpc_url,
                "--models",
                "far",
                "--concurrency",
                "1,2,4,8",
                "--window",
                "2",
                "--out",
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            # wait until the process is measuring latency (many requests reach the model)
            while client.statistics("far").success_count < before + 50:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "compare never started measuring"
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted; partial results in" in err
    doc = json.loads((out / "results.json").read_text())
    assert doc["complete"] is False
    assert doc["incomplete_reason"].startswith("interrupted (Ctrl-C) while measuring latency")
    assert doc["quality"]["models"]["far"]["n_tiles"] == 6  # quality had finished
