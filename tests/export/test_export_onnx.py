"""ONNX export: in-graph normalization, parity gate, batch independence, size multiples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from stainbench.errors import DataError, ExportError, ModelError
from stainbench.export.exporter import export_checkpoint
from stainbench.export.onnx import (
    OnnxTileModel,
    TileTranslator,
    export_onnx,
    make_translator,
    read_metadata,
)
from stainbench.export.parity import run_parity_gate
from stainbench.export.profile import ExportProfile, ParitySettings, TritonSettings
from stainbench.models import create_model, get_entry, list_models

FAMILIES = ("cyclegan", "pix2pix", "unet")
SMALL = ExportProfile(
    triton=TritonSettings(warmup_tile=32), parity=ParitySettings(tile=32, val_tiles=3)
)


def normalization() -> dict[str, dict]:
    from stainbench.data.transforms import Normalization

    a = Normalization("range", "A", (127.5,) * 3, (127.5,) * 3)
    b = Normalization("zscore", "B", (170.0, 120.0, 160.0), (45.0, 60.0, 40.0))
    return {"A": a.to_dict(), "B": b.to_dict()}


def _translator(arch: str, seed: int = 0) -> TileTranslator:
    torch.manual_seed(seed)
    g = create_model(arch, **get_entry(arch).small_kwargs)
    return make_translator(g, normalization(), g.size_multiple)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_family_parity_and_manifest(
    family: str, tmp_path: Path, demo_store: Path, checkpoint_factory, norm_dicts
) -> None:
    ckpt = checkpoint_factory(
        family, "r1", path=tmp_path / "runs" / "r1" / "best.pt", store=str(demo_store)
    )
    result = export_checkpoint(ckpt.parent, tmp_path / "repo", SMALL)
    assert result.name == f"{family}_r1" and result.version == 1
    p = result.parity
    assert p["passed"] and p["val_tiles"] == 3 and p["random_tiles"] == 2
    assert p["float_rel"] <= 1e-4 and p["uint8_max"] <= 1 and p["batch_uint8_max"] <= 1
    manifest = json.loads((result.version_dir / "export_manifest.json").read_text())
    assert manifest["source"]["sha256"] and manifest["source"]["family"] == family
    assert Path(manifest["data"]["store"]).resolve() == Path(demo_store).resolve()
    assert manifest["normalization"] == norm_dicts
    assert manifest["tile"]["size_multiple"] == result.size_multiple
    assert manifest["versions"]["onnxruntime"] and manifest["version"] == 1
    model = onnx.load(str(result.version_dir / "model.onnx"))
    assert model.opset_import[0].version >= 17
    assert [o.name for o in model.graph.output] == ["OUTPUT"]
    assert not list(result.version_dir.glob("*.data"))  # weights inside the file
    meta = read_metadata(result.version_dir / "model.onnx")
    assert meta["size_multiple"] == str(result.size_multiple) and meta["family"] == family

    # served graph vs PyTorch on real val tiles, and a tile alone vs in a batch of others
    from stainbench.data.store import open_store
    from stainbench.training.checkpoint import load_generator

    tiles = np.asarray(open_store(demo_store).array("val", "A")[:4])
    warm = (result.model_dir / "warmup" / "INPUT").read_bytes()
    assert warm == tiles[0].tobytes()  # the warm-up (and --check) tile is a real val tile
    gen, info = load_generator(ckpt)
    ref, _ = make_translator(gen, info.normalization, info.size_multiple).translate(tiles)
    served = OnnxTileModel(result.version_dir / "model.onnx", threads=1)
    out = served.run(tiles)
    assert out.dtype == np.uint8 and out.shape == tiles.shape
    assert np.abs(out.astype(int) - ref).max() <= 1
    alone = served.run(tiles[2:3])
    assert np.abs(alone.astype(int) - out[2:3]).max() <= 1


@pytest.mark.parametrize("arch", list_models("generator"))
def test_every_registered_generator_exports(arch: str, tmp_path: Path) -> None:
    tr = _translator(arch)
    files = export_onnx(tr, tmp_path)
    report = run_parity_gate(tr, OnnxTileModel(files.parity), None, ParitySettings(tile=16))
    assert report.passed and report.val_tiles == 0
    assert report.tile % tr.size_multiple == 0


def test_dynamic_batch_and_tile_size(tmp_path: Path) -> None:
    tr = _translator("unet")
    m = OnnxTileModel(export_onnx(tr, tmp_path).model)
    for shape in [(1, 8, 8, 3), (5, 16, 40, 3), (2, 64, 24, 3)]:
        x = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
        y = m.run(x)
        assert y.shape == shape and y.dtype == np.uint8
        assert np.abs(y.astype(int) - tr.translate(x)[0]).max() <= 1


def test_in_graph_normalization_is_the_checkpoint_affine(tmp_path: Path) -> None:
    """With an identity generator the graph is exactly denorm_B(norm_A(x)), rounded."""
    tr = make_translator(torch.nn.Identity(), normalization(), 1)
    m = OnnxTileModel(export_onnx(tr, tmp_path).model)
    x = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    a, b = normalization()["A"], normalization()["B"]
    expect = (x - np.array(a["offset"])) / np.array(a["scale"])
    expect = np.clip(np.round(expect * np.array(b["scale"]) + np.array(b["offset"])), 0, 255)
    assert np.abs(m.run(x).astype(int) - expect).max() <= 1


def test_size_multiple_enforced_with_clear_error(tmp_path: Path) -> None:
    tr = _translator("unet")
    m = OnnxTileModel(export_onnx(tr, tmp_path).model)
    assert m.size_multiple == tr.size_multiple == 8
    x = np.zeros((1, 12, 16, 3), np.uint8)
    with pytest.raises(DataError, match="multiples of 8, got 12x16"):
        m.run(x)
    with pytest.raises(DataError, match="uint8"):
        m.run(x.astype(np.float32))


class BatchCentering(torch.nn.Module):
    """Subtracts the batch mean, as train-mode BatchNorm does: outputs depend on batch-mates."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x - x.mean(dim=0, keepdim=True))


def test_batch_dependent_model_fails_the_gate(tmp_path: Path) -> None:
    tr = make_translator(BatchCentering(), normalization(), 1)
    files = export_onnx(tr, tmp_path)
    with pytest.raises(
        ExportError, match=r"gate failed: a tile alone vs inside a batch of 3.*batch-mates"
    ):
        run_parity_gate(tr, OnnxTileModel(files.parity), None, ParitySettings(tile=8))


def test_failed_gate_writes_nothing(tmp_path: Path, checkpoint_factory) -> None:
    ckpt = checkpoint_factory("unet")
    strict = ExportProfile(
        triton=TritonSettings(warmup_tile=16),
        parity=ParitySettings(tile=16, float_rtol=1e-15, uint8_atol=0),
    )
    repo = tmp_path / "repo"
    with pytest.raises(
        ExportError, match=r"gate failed: ONNX Runtime vs PyTorch.*Nothing was written"
    ):
        export_checkpoint(ckpt, repo, strict)
    assert not repo.exists() or not any(repo.iterdir())


def test_bad_checkpoints(tmp_path: Path, checkpoint_factory) -> None:
    not_ours = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, not_ours)
    with pytest.raises(ModelError, match="not a stainbench checkpoint"):
        export_checkpoint(not_ours, tmp_path / "repo", SMALL)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="corrupt"):
        export_checkpoint(corrupt, tmp_path / "repo", SMALL)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(ModelError, match="no checkpoint"):
        export_checkpoint(empty, tmp_path / "repo", SMALL)
    ckpt = checkpoint_factory("unet")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportError, match="is a file"):
        export_checkpoint(ckpt, tmp_path / "afile", SMALL)
    with pytest.raises(ExportError, match="invalid"):
        export_checkpoint(ckpt, tmp_path / "repo", SMALL, name="a/b")
    assert not (tmp_path / "repo").exists()


def test_onnxruntime_flavour_layout_and_static_check(tmp_path: Path, checkpoint_factory) -> None:
    from stainbench.export.check import check_repository

    ckpt = checkpoint_factory("pix2pix")
    prof = ExportProfile(
        flavour="onnxruntime",
        triton=TritonSettings(warmup_tile=16, instance_kind="KIND_CPU"),
        parity=ParitySettings(tile=16),
    )
    result = export_checkpoint(ckpt, tmp_path / "repo", prof)
    names = sorted(p.name for p in result.version_dir.iterdir())
    assert names == ["export_manifest.json", "model.onnx"]
    cfg = (result.model_dir / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in cfg and 'default_model_filename: "model.onnx"' in cfg
    report = check_repository(tmp_path / "repo")  # no python-backend model: no server needed
    assert [(m.name, m.status) for m in report.models] == [("pix2pix_demo", "static-only")]
    assert report.ok and "official Triton container" in report.models[0].reason


@pytest.mark.slow
def test_dynamo_exporter_gives_the_same_graph_behaviour(tmp_path: Path) -> None:
    tr = _translator("resnet")
    files = export_onnx(tr, tmp_path, exporter="dynamo")
    assert not list(tmp_path.glob("*.data"))
    model = OnnxTileModel(files.model)
    x = np.random.default_rng(3).integers(0, 256, (3, 24, 20, 3), dtype=np.uint8)
    assert np.abs(model.run(x).astype(int) - tr.translate(x)[0]).max() <= 1
    assert run_parity_gate(tr, OnnxTileModel(files.parity), None, ParitySettings(tile=16)).passed


def test_phase_pads_are_fused_into_convolutions_by_onnx_runtime(tmp_path: Path) -> None:
    """The phase-decomposed transposed convolutions export one Pad per phase; the exporter
    drops their omitted optional inputs so that ONNX Runtime folds every Pad into its Conv."""
    import onnxruntime as ort

    torch.manual_seed(0)
    g = create_model("unet", depth=3, base_width=8, transpose_impl="phase")
    tr = make_translator(g, normalization(), g.size_multiple)
    files = export_onnx(tr, tmp_path)
    graph = onnx.load(str(files.model)).graph
    pads = [n for n in graph.node if n.op_type == "Pad"]
    assert pads, "expected the phase decomposition's Pad nodes in the exported graph"
    assert all(name for n in graph.node for name in n.input[-1:])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(files.model), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph
    assert not [n for n in optimized.node if n.op_type == "Pad"]
    x = np.random.default_rng(2).integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    assert np.abs(OnnxTileModel(files.model).run(x).astype(int) - tr.translate(x)[0]).max() <= 1


def test_export_float_graph_has_dynamic_batch_and_matches_torch(tmp_path: Path) -> None:
    import onnxruntime as ort

    from stainbench.export.onnx import export_float_graph

    torch.manual_seed(0)
    g = create_model("unet", depth=3, base_width=8, transpose_impl="phase").eval()
    path = export_float_graph(g, torch.zeros(1, 3, 16, 16), tmp_path / "g.onnx")
    graph = onnx.load(str(path)).graph
    assert all(name for n in graph.node for name in n.input[-1:])  # empty inputs dropped
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, g(x).numpy(), atol=1e-5)


def test_biases_before_instance_norm_are_dropped_with_the_same_output(tmp_path: Path) -> None:
    """A (transposed) convolution's bias cancels in the instance norm right after it: the
    exporter removes it; a bias whose output also feeds another node is kept."""
    import onnxruntime as ort

    from stainbench.export.onnx import drop_bias_before_instance_norm, export_float_graph

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = torch.nn.ConvTranspose2d(3, 6, 4, stride=2, padding=1)
            self.conv = torch.nn.Conv2d(6, 5, 3, padding=1)
            self.norm_up = torch.nn.InstanceNorm2d(6)
            self.norm = torch.nn.InstanceNorm2d(5, affine=True)
            self.side = torch.nn.Conv2d(5, 5, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(torch.relu(self.norm_up(self.up(x))))
            s = self.side(h)  # the same conv output feeds the norm and this layer: kept
            return self.norm(h) + s

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # non-zero biases and an affine norm, unlike a fresh generator
        for m in (net.up, net.conv, net.side):
            m.bias.uniform_(-2.0, 2.0)
        net.norm.weight.uniform_(0.5, 1.5)
        net.norm.bias.uniform_(-1.0, 1.0)
    raw = tmp_path / "raw.onnx"
    path = export_float_graph(net, torch.zeros(1, 3, 8, 8), raw, drop_empty_inputs=False)
    proto = onnx.load(str(path))
    n_init = len(proto.graph.initializer)
    assert drop_bias_before_instance_norm(proto) == 1  # only the transposed convolution's
    # its initializer goes too (ONNX Runtime warns about every unused one)
    assert len(proto.graph.initializer) == n_init - 1
    read = {name for node in proto.graph.node for name in node.input}
    assert all(init.name in read for init in proto.graph.initializer)
    kinds = {n.op_type: len(n.input) for n in proto.graph.node if "Conv" in n.op_type}
    assert kinds["ConvTranspose"] == 2 and kinds["Conv"] == 3
    assert drop_bias_before_instance_norm(proto) == 0  # idempotent
    onnx.save_model(proto, str(tmp_path / "dropped.onnx"))
    # export_float_graph (and export_onnx) apply it themselves
    default = onnx.load(str(export_float_graph(net, torch.zeros(1, 3, 8, 8), tmp_path / "d.onnx")))
    assert [len(n.input) for n in default.graph.node if n.op_type == "ConvTranspose"] == [2]
    x = torch.randn(2, 3, 8, 8)  # export_float_graph: only the batch is dynamic
    with torch.no_grad():
        want = net(x).numpy()
    for file in ("raw.onnx", "dropped.onnx", "d.onnx"):
        sess = ort.InferenceSession(str(tmp_path / file), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], want, atol=2e-5)
