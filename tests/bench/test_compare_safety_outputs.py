"""``compare`` keeps its output folder to one run: a run refused before it measured anything
leaves the previous report byte-identical, a run that writes a report removes the previous
one's other files (plots), and a parity mismatch is loud (a console line, exit code 3).

Real tritonserver on python-backend ``invert`` models (255 - x); the parity check reads the
``model.onnx`` placed beside each served version: a matching one (255 - x) and a stale one
(the identity), as when a repository was changed after the server loaded it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from stainbench.bench.compare import CompareInterrupted, CompareOptions, run_compare
from stainbench.errors import BenchmarkError, ServingError, StainbenchError
from stainbench.serving.runtime import free_ports
from stainbench.serving.server import TritonServer
from stainbench.serving.testing import write_numpy_model

pytestmark = pytest.mark.slow


def _onnx(invert: bool) -> onnx.ModelProto:
    """uint8 (B, H, W, 3) -> uint8: ``255 - x`` (as the served model) or the identity."""
    dims = ["B", "H", "W", 3]
    if invert:
        nodes = [helper.make_node("Sub", ["full", "INPUT"], ["OUTPUT"])]
        inits = [helper.make_tensor("full", TensorProto.UINT8, [], [255])]
    else:
        nodes, inits = [helper.make_node("Identity", ["INPUT"], ["OUTPUT"])], []
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("INPUT", TensorProto.UINT8, dims)],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.UINT8, dims)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("safety_repo")
    for name, matching in (("invert", True), ("stale", False)):
        model_dir = write_numpy_model(root, name, "invert")
        onnx.save(_onnx(matching), model_dir / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[TritonServer]:
    with TritonServer(repo, timeout=90) as srv:
        yield srv


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 24x24 tile pairs (PNG), targets a noisy inversion of the inputs."""
    root = tmp_path_factory.mktemp("safety_val")
    rng = np.random.default_rng(3)
    for i in range(4):
        a = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        b = np.clip(255 - a.astype(np.int16) + rng.integers(-4, 5, a.shape), 0, 255)
        for folder, tile in (("A", a), ("B", b.astype(np.uint8))):
            (root / folder).mkdir(exist_ok=True)
            Image.fromarray(tile).save(root / folder / f"t{i}.png")
    return root


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _options(val_dir: Path, out: Path, url: str, **kw: object) -> CompareOptions:
    settings: dict[str, object] = dict(
        val_set=val_dir, url=url, models=["invert"], out=out, n_boot=100, concurrency=[]
    )
    settings.update(kw)
    return CompareOptions(**settings)  # type: ignore[arg-type]


def test_refused_runs_leave_the_report_alone_and_a_new_run_replaces_it(
    server: TritonServer, repo: Path, val_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    latency = {"window_s": 0.2, "max_windows": 3, "min_window_requests": 2}
    first = run_compare(
        _options(val_dir, out, server.grpc_url, repo=repo, concurrency=[1], latency=latency)
    )
    assert first.complete
    before = _snapshot(out)
    assert {"results.json", "report.md", "latency_cdf.png", "throughput.png"} <= set(before)

    dead = f"grpc://127.0.0.1:{free_ports(1)[0]}"
    refused: list[tuple[CompareOptions, type[StainbenchError], str]] = [
        (_options(val_dir, out, dead), ServingError, "cannot reach the Triton server"),
        (
            _options(val_dir, out, server.grpc_url, models=["nope"]),
            ServingError,
            "model 'nope' is unknown",
        ),
        (
            _options(val_dir, out, server.grpc_url, baseline="unet"),
            BenchmarkError,
            "--baseline 'unet' is not among",
        ),
        (_options(tmp_path / "no_val", out, server.grpc_url), BenchmarkError, "not found"),
    ]
    for options, error, message in refused:
        with pytest.raises(error, match=message) as info:
            run_compare(options)
        assert "partial results" not in str(info.value)
        assert _snapshot(out) == before, message  # same names, same bytes

    # a new complete run without latency: the old latency plots must not stay beside it
    second = run_compare(_options(val_dir, out, server.grpc_url))
    assert second.complete
    names = {p.name for p in out.iterdir()}
    assert names == {"results.json", "per_tile.csv", "report.md", "examples.png"}
    assert (out / "results.json").read_bytes() != before["results.json"]


def test_interrupted_run_writes_its_partial_report_without_older_plots(
    server: TritonServer, val_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    latency = {"window_s": 0.2, "max_windows": 3, "min_window_requests": 2}
    run_compare(_options(val_dir, out, server.grpc_url, concurrency=[1], latency=latency))
    assert (out / "throughput.png").is_file()

    def stop_after_two(phase: str, done: int, total: int) -> None:
        if phase == "quality" and done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(CompareInterrupted) as info:
        run_compare(
            _options(val_dir, out, server.grpc_url, concurrency=[1], latency=latency),
            progress=stop_after_two,
        )
    assert info.value.report == out
    assert "INCOMPLETE" in (out / "report.md").read_text()
    assert not (out / "throughput.png").exists() and not (out / "latency_cdf.png").exists()


def test_cli_parity_mismatch_is_reported_and_exits_3(
    server: TritonServer, repo: Path, val_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from stainbench.cli.main import main

    def cli(models: str, out: str) -> tuple[int, str, str]:
        code = main(
            [
                "compare", "--val-set", str(val_dir), "--url", server.grpc_url, "--repo",
                str(repo), "--models", models, "--concurrency", "0", "--n-boot", "100",
                "--out", str(tmp_path / out),
            ]
        )  # fmt: skip
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, stdout, stderr = cli("invert", "ok")
    assert code == 0 and "ok (max 0)" in stdout and "parity MISMATCH" not in stdout + stderr

    code, stdout, stderr = cli("invert,stale", "mismatch")
    assert code == 3
    # the reason for exit code 3 is on stderr; the table (stdout) shows the cell
    lines = [ln for ln in stderr.splitlines() if ln.startswith("parity MISMATCH")]
    assert len(lines) == 1 and "stale:" in lines[0] and "max |diff| 255" in lines[0], stderr
    assert "MISMATCH" in stdout and "report:" in stdout
    assert '"complete": true' in (tmp_path / "mismatch" / "results.json").read_text()
