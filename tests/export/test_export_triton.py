"""The Triton repository writer: golden config.pbtxt files, versions, conflicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stainbench.errors import ExportError
from stainbench.export.profile import TritonSettings, load_profile
from stainbench.export.triton import (
    ModelIdentity,
    build_config,
    config_text,
    default_model_name,
    list_models,
    parse_config,
    python_model_source,
    validate_model_name,
    write_model,
)

GOLDEN = Path(__file__).parent / "golden"
IDENTITY = ModelIdentity("unet", 256, "0123abcd")
#: Short ids: a parameter id "tensorrt" would read as the `tensorrt` marker and be skipped.
IDS = {"python": "py", "onnxruntime": "ort", "tensorrt": "trt"}.get
CASES = {
    "python": ("cpu", "unet_demo"),
    "onnxruntime": ("onnxruntime", "unet_demo_ort"),
    "tensorrt": ("tensorrt-fp16", "unet_demo_trt"),
}


@pytest.mark.parametrize("flavour", sorted(CASES), ids=IDS)
def test_config_matches_golden(flavour: str, repo_root: Path) -> None:
    profile_name, model = CASES[flavour]
    profile = load_profile(repo_root / "export" / f"{profile_name}.yaml")
    assert profile.flavour == flavour
    text = config_text(build_config(model, flavour, profile.triton, IDENTITY))
    expected = (GOLDEN / f"{flavour}.config.pbtxt").read_text(encoding="utf-8")
    assert text == expected


@pytest.mark.parametrize("flavour", sorted(CASES), ids=IDS)
def test_golden_configs_follow_contract(flavour: str) -> None:
    cfg = parse_config(GOLDEN / f"{flavour}.config.pbtxt")
    assert cfg.max_batch_size > 0
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("INPUT", [-1, -1, 3])]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("OUTPUT", [-1, -1, 3])]
    assert cfg.input[0].data_type == cfg.output[0].data_type == 2  # TYPE_UINT8
    assert cfg.parameters["stainbench.size_multiple"].string_value == "256"
    assert cfg.parameters["stainbench.family"].string_value == "unet"
    assert cfg.dynamic_batching.max_queue_delay_microseconds <= 1000
    warm = cfg.model_warmup[0].inputs["INPUT"]
    assert list(warm.dims) == [256, 256, 3] and warm.input_data_file == "INPUT"
    expected = {"python": ("python", ""), "onnxruntime": ("", "onnxruntime_onnx")}
    expected["tensorrt"] = ("", "tensorrt_plan")
    assert (cfg.backend, cfg.platform) == expected[flavour]


def test_version_policy_and_instances() -> None:
    s = TritonSettings(version_policy="all", instance_count=2, dynamic_batching=False)
    cfg = build_config("m", "python", s, IDENTITY, warmup=False)
    assert cfg.version_policy.HasField("all")
    assert cfg.instance_group[0].count == 2
    assert not cfg.HasField("dynamic_batching") and not cfg.model_warmup


@pytest.mark.parametrize("bad", ["a/b", "../x", "", "x y", "..", "a\\b"])
def test_invalid_names_rejected(bad: str) -> None:
    with pytest.raises(ExportError, match="invalid"):
        validate_model_name(bad)


def test_default_model_name_sanitizes() -> None:
    assert default_model_name("unet", "my run/1") == "unet_my_run_1"
    assert default_model_name("cyclegan", "cyclegan") == "cyclegan"
    assert default_model_name("unet", "demo_unet") == "unet_demo"
    assert default_model_name("pix2pix", "pix2pix-he2ihc") == "pix2pix_he2ihc"


def _write(repo: Path, name: str = "m", family: str = "unet", **kw: object) -> object:
    cfg = build_config(name, "python", TritonSettings(warmup_tile=8), ModelIdentity(family, 4, ""))
    tile = np.full((8, 8, 3), 7, np.uint8)
    files = {"model.py": python_model_source(), "model.onnx": b"onnx-bytes"}
    return write_model(repo, name, cfg, files, warmup_tile=tile, **kw)


def test_new_exports_get_new_versions(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = _write(repo)
    second = _write(repo)
    assert (first.version, second.version) == (1, 2)
    assert (repo / "m" / "1" / "model.onnx").read_bytes() == b"onnx-bytes"
    assert (repo / "m" / "warmup" / "INPUT").read_bytes() == bytes([7]) * 8 * 8 * 3
    models = list_models(repo)
    assert [(m.name, m.versions, m.size_multiple, m.flavour) for m in models] == [
        ("m", (1, 2), 4, "python")
    ]
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no staging left


def test_conflicts_refused_without_force(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _write(repo)
    with pytest.raises(ExportError, match="version 1 already exists"):
        _write(repo, version=1)
    with pytest.raises(ExportError, match=r"family 'unet'.*--force"):
        _write(repo, family="cyclegan")
    assert [m.versions for m in list_models(repo)] == [(1,)]
    replaced = _write(repo, family="cyclegan", force=True)
    assert replaced.version == 1
    assert list_models(repo)[0].family == "cyclegan"
    foreign = repo / "foreign"
    foreign.mkdir()
    with pytest.raises(ExportError, match="not written by stainbench"):
        _write(repo, name="foreign")


def test_repository_that_is_a_file(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.write_text("not a folder")
    with pytest.raises(ExportError, match="is a file"):
        _write(repo)


def test_broken_config_named(tmp_path: Path) -> None:
    bad = tmp_path / "repo" / "broken"
    bad.mkdir(parents=True)
    (bad / "config.pbtxt").write_text("max_batch_size: banana\n")
    with pytest.raises(ExportError, match=r"broken/config\.pbtxt: not a valid config\.pbtxt"):
        list_models(tmp_path / "repo")


def test_cpu_throughput_profile_is_the_cpu_profile_with_two_instances(repo_root: Path) -> None:
    cpu = load_profile(repo_root / "export" / "cpu.yaml")
    fast = load_profile(repo_root / "export" / "cpu-throughput.yaml")
    assert fast.flavour == cpu.flavour == "python"
    assert fast.triton.instance_count == 2 and cpu.triton.instance_count == 1
    assert fast.triton.intra_op_threads == 0  # cores / instances on the serving machine
    assert fast.parity == cpu.parity
    cfg = build_config("unet_demo", "python", fast.triton, IDENTITY)
    from tritonclient.grpc import model_config_pb2 as mc

    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, mc.ModelInstanceGroup.KIND_CPU)]
    want = build_config("unet_demo", "python", cpu.triton, IDENTITY)
    want.instance_group[0].count = 2
    assert config_text(cfg) == config_text(want)
