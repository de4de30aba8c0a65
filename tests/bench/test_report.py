"""The report writer on a synthetic comparison: every output file, its content, the table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from stainbench.bench.quality import IDENTITY, QualityAccumulator
from stainbench.bench.report import (
    CompareResult,
    ExampleTiles,
    best_indices,
    pareto_front,
    render_table,
    table_rows,
    write_report,
)
from stainbench.metrics import METRICS, metric_settings


def _result(n: int = 5) -> CompareResult:
    rng = np.random.default_rng(0)
    target = rng.integers(40, 200, (n, 32, 32, 3), dtype=np.uint8)
    inputs = np.clip(target.astype(int) + 30, 0, 255).astype(np.uint8)
    good = np.clip(target.astype(int) + rng.integers(-3, 4, target.shape), 0, 255).astype(np.uint8)
    bad = np.clip(target.astype(int) + rng.integers(-20, 21, target.shape), 0, 255).astype(np.uint8)
    acc = QualityAccumulator(metric_settings(np.uint8))
    acc.add_identity(range(n), inputs, target)
    acc.add("unet_a", range(n), bad, target)
    acc.add("gan_b", range(n), good, target)
    latency = []
    for model, base in (("unet_a", 10.0), ("gan_b", 20.0)):
        for c in (1, 2, 4):
            latency.append(
                {
                    "model": model,
                    "concurrency": c,
                    "throughput": c * 1000 / base / (1 + 0.2 * c),
                    "p50_ms": base * (1 + 0.2 * c),
                    "p90_ms": base * 1.3,
                    "p95_ms": base * 1.4,
                    "p99_ms": base * 1.6,
                    "stable": True,
                    "server_queue_ms": 0.1,
                    "client_cpu": 0.12,
                }
            )
    samples = {
        "unet_a": {1: list(rng.normal(10, 1, 200))},
        "gan_b": {1: list(rng.normal(20, 2, 200))},
    }
    return CompareResult(
        settings={"url": "grpc://127.0.0.1:1", "protocol": "grpc", "command": "test"},
        valset={"source": "synthetic", "n_tiles": n, "tile_sizes": ["32x32"]},
        models={"unet_a": {"family": "unet"}, "gan_b": {"family": "cyclegan"}, "macenko": {}},
        quality=acc.summarize(baseline="unet_a", n_boot=200, seed=0),
        per_tile=acc.rows(),
        tile_names=[f"t{i}" for i in range(n)],
        latency=latency,
        latency_samples=samples,
        parity={
            "unet_a": {"ok": True, "max_abs_diff": 0, "detail": "identical"},
            "gan_b": {"ok": False, "max_abs_diff": 7, "detail": "7 grey levels"},
            "macenko": {"ok": None, "detail": "n/a: no model.onnx in the repository"},
        },
        examples=ExampleTiles(
            names=["t0", "t1"],
            inputs=inputs[:2],
            targets=target[:2],
            outputs={"unet_a": bad[:2], "gan_b": good[:2]},
        ),
    )


def test_write_report_all_outputs(tmp_path: Path) -> None:
    result = _result()
    files = write_report(result, tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        "examples.png",
        "latency_cdf.png",
        "per_tile.csv",
        "quality_vs_latency.png",
        "report.md",
        "results.json",
        "throughput.png",
    ]
    for p in files.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(files.results_json.read_text())
    assert doc["complete"] is True and doc["incomplete_reason"] is None
    assert doc["quality"]["baseline"] == "unet_a"
    gan = doc["quality"]["models"]["gan_b"]
    assert gan["mean"]["mae"]["value"] < doc["quality"]["models"]["unet_a"]["mean"]["mae"]["value"]
    assert gan["vs_baseline"]["ssim"]["value"] > 0
    assert doc["machine"]["cpu_count"] >= 1 and "numpy" in doc["versions"]
    assert doc["quality"]["metric_settings"]["ssim_window"] == 11
    assert len(doc["per_tile"]) == 15
    assert len(doc["latency_samples_ms"]["gan_b"]["1"]) == 200
    rows = list(csv.DictReader(files.per_tile_csv.open()))
    assert len(rows) == 15 and set(rows[0]) == {"model", "tile", "name", *METRICS}
    by = {(r["model"], r["tile"]): r for r in rows}
    assert by[("gan_b", "3")]["name"] == "t3"
    # the CSV holds the per-tile numbers the summary was computed from
    mean_mae = np.mean([float(r["mae"]) for r in rows if r["model"] == "gan_b"])
    assert mean_mae == pytest.approx(gan["mean"]["mae"]["value"], rel=1e-5)
    md = files.report_md.read_text()
    assert "| model |" in md and "MISMATCH" in md and "![examples.png](examples.png)" in md
    assert "INCOMPLETE" not in md


def test_incomplete_and_nonfinite_values(tmp_path: Path) -> None:
    result = _result()
    result.latency = []
    result.latency_samples = {}
    result.per_tile[0]["psnr"] = float("inf")
    result.per_tile[1]["stain_pearson"] = float("nan")
    result.mark_incomplete("interrupted (Ctrl-C) during latency of gan_b")
    result.mark_incomplete("second reason is ignored")
    files = write_report(result, tmp_path)
    doc = json.loads(files.results_json.read_text())  # strict JSON: no NaN/Infinity tokens
    assert doc["complete"] is False
    assert doc["incomplete_reason"].startswith("interrupted (Ctrl-C)")
    assert doc["per_tile"][0]["psnr"] == "inf" and doc["per_tile"][1]["stain_pearson"] is None
    assert "INCOMPLETE" in files.report_md.read_text()
    assert {p.name for p in files.plots} == {"examples.png"}  # no latency: no latency plots
    text = files.per_tile_csv.read_text()
    assert ",inf," in text and ",nan," in text


def test_table_marks_best_per_column() -> None:
    result = _result()
    header, rows, better = table_rows(result)
    assert header[0] == "model" and "SSIM" in header and "parity" in header
    assert [r[0].text for r in rows] == [IDENTITY, "unet_a", "gan_b", "macenko"]
    best = best_indices(rows, better)
    ssim_col, mae_col = header.index("SSIM"), header.index("MAE")
    p50_col = header.index("p50 ms (c=1)")
    assert best[ssim_col] == {2} and best[mae_col] == {2}  # gan_b is best in quality
    assert best[p50_col] == {1}  # unet_a is fastest
    console = Console(file=io.StringIO(), width=250, record=True)
    render_table(result, console)
    text = console.export_text()
    assert "★" in text and "MISMATCH" in text and "gan_b" in text
    # a model without model.onnx is "n/a", not a mismatch
    assert [r[-1].text for r in rows] == ["n/a", "ok (max 0)", "MISMATCH (max 7)", "n/a"]


def test_pareto_front() -> None:
    # (latency, quality): b dominates d; c is slower but better; a fastest
    pts = [(1.0, 0.5), (2.0, 0.7), (5.0, 0.9), (3.0, 0.6)]
    assert pareto_front(pts) == [0, 1, 2]


def test_a_difference_to_a_zero_baseline_is_not_a_number_nor_marked_ns(tmp_path: Path) -> None:
    import dataclasses

    from stainbench.bench.report import DELTA_METRICS

    result = _result()
    summ = result.quality.summary["gan_b"]
    nan = float("nan")
    for m in DELTA_METRICS:  # what the baseline's mean of 0 gives (no stain in its output)
        summ.vs_baseline[m] = dataclasses.replace(summ.vs_baseline[m], value=nan, low=nan, high=nan)
    header, rows, _ = table_rows(result)
    gan = next(r for r in rows if r[0].text == "gan_b")
    delta_cells = [gan[i].text for i, h in enumerate(header) if h.startswith("Δ")]
    assert delta_cells and all(t == "n/a (baseline 0)" for t in delta_cells)
    # compare's detail for a model without model.onnx already starts with "not checked:"
    result.parity["macenko"]["detail"] = "not checked: no model.onnx in the repository"
    md = write_report(result, tmp_path).report_md.read_text()
    assert "nan%" not in md and "n/a (baseline 0)" in md
    assert "- `macenko`: not checked: no model.onnx in the repository" in md
    assert "not checked: not checked" not in md
