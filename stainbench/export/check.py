"""``stainbench export --check``: serve a repository with the real Triton server and verify it.

For every model directory of the repository:

1. static checks: a readable ``config.pbtxt`` that follows the contract (``INPUT``/``OUTPUT``
   uint8 ``[-1, -1, 3]``, ``max_batch_size > 0``), a version directory with the files its
   flavour needs, and for ONNX flavours a graph that ONNX Runtime loads;
2. the models the bundled server can run (python backend) are loaded by the real
   ``tritonserver`` (:class:`stainbench.serving.TritonServer`); a model that fails to load is
   reported with Triton's reason and the server is restarted without it;
3. each loaded model must be READY and answer one real tile (its warm-up tile, a real
   validation tile when the export had one) exactly as the same files do in-process
   (ONNX Runtime for ONNX models, the numpy code for ``macenko``): identical at batch 1.

``onnxruntime_onnx`` and ``tensorrt_plan`` models need the official Triton container; here
they get the static and in-process checks only, and say so.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stainbench.errors import ExportError, StainbenchError
from stainbench.export import triton

_FAILED = re.compile(r"model '([^']+)' \(version \d+\) failed to load: (.*?)(?: \(server log|$)")


@dataclass
class ModelCheck:
    """Result for one model: ``status`` ``ok``, ``failed`` or ``static-only``."""

    name: str
    status: str = "failed"
    flavour: str = ""
    version: int | None = None
    reason: str = ""
    tile_shape: tuple[int, ...] = ()
    max_diff: int | None = None


@dataclass
class CheckReport:
    """All models of a repository and whether the server served them correctly."""

    repo: Path
    models: list[ModelCheck] = field(default_factory=list)
    server_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return bool(self.models) and all(m.status != "failed" for m in self.models)

    def failed(self) -> list[ModelCheck]:
        return [m for m in self.models if m.status == "failed"]


def _served_version(cfg: Any, versions: list[int]) -> int | None:
    if not versions:
        return None
    if cfg.version_policy.HasField("specific") and cfg.version_policy.specific.versions:
        return max(int(v) for v in cfg.version_policy.specific.versions)
    return versions[-1]


def _sample_tile(model_dir: Path, cfg: Any) -> np.ndarray:
    """The model's warm-up tile ``(1, H, W, 3)`` uint8, else a random 64x64 one."""
    for w in cfg.model_warmup:
        spec = w.inputs.get(triton.INPUT_NAME)
        path = model_dir / triton.WARMUP_DIR / (spec.input_data_file if spec else "")
        if spec is not None and spec.input_data_file and path.is_file():
            dims = [int(d) for d in spec.dims]
            data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
            if data.size == int(np.prod(dims)):
                return data.reshape(1, *dims).copy()
    m = int(cfg.parameters["stainbench.size_multiple"].string_value or 1)
    side = -(-64 // m) * m
    return np.random.default_rng(0).integers(0, 256, (1, side, side, 3), dtype=np.uint8)


def _reference(model_dir: Path, vdir: Path, cfg: Any, tile: np.ndarray) -> np.ndarray | None:
    """In-process output of the same files, or None when there is no in-process runner."""
    from stainbench.export.onnx import OnnxTileModel

    if (vdir / "macenko_impl.py").is_file():
        spec = importlib.util.spec_from_file_location("_check_macenko", vdir / "macenko_impl.py")
        assert spec is not None and spec.loader is not None
        impl = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = impl  # dataclasses look their module up there
        try:
            spec.loader.exec_module(impl)
        finally:
            del sys.modules[spec.name]
        target = impl.MacenkoTarget.from_dict(
            json.loads((vdir / "macenko_target.json").read_text(encoding="utf-8"))
        )
        return impl.macenko_transfer(tile, target)
    onnx_file = vdir / "model.onnx"
    if onnx_file.is_file():
        return OnnxTileModel(onnx_file).run(tile)
    return None


def _static_check(model_dir: Path) -> tuple[ModelCheck, Any, np.ndarray | None]:
    """Config, files and in-process run of one model; ``check.status`` stays ``failed``
    (with a reason) when something is wrong."""
    check = ModelCheck(model_dir.name)
    try:
        cfg = triton.parse_config(model_dir / "config.pbtxt")
    except ExportError as exc:
        check.reason = str(exc)
        return check, None, None
    served = triton.ServedModel(model_dir.name, model_dir, cfg, (), "", 1, "")
    check.flavour = served.flavour
    ins = [(i.name, i.data_type, list(i.dims)) for i in cfg.input]
    outs = [(o.name, o.data_type, list(o.dims)) for o in cfg.output]
    want_in = [(triton.INPUT_NAME, 2, [-1, -1, 3])]
    want_out = [(triton.OUTPUT_NAME, 2, [-1, -1, 3])]
    if cfg.name and cfg.name != model_dir.name:
        check.reason = f"config name {cfg.name!r} differs from its folder name"
    elif cfg.max_batch_size < 1 or ins != want_in or outs != want_out:
        check.reason = (
            "config does not follow the contract (INPUT/OUTPUT uint8 [-1,-1,3], max_batch_size > 0)"
        )
    version = _served_version(cfg, triton.versions_of(model_dir))
    check.version = version
    if check.reason:
        return check, cfg, None
    if version is None:
        check.reason = "no version directory (e.g. 1/)"
        return check, cfg, None
    vdir = model_dir / str(version)
    needed = {"python": "model.py", "onnxruntime": "model.onnx", "tensorrt": "model.plan"}
    need = needed.get(check.flavour)
    if need and not (vdir / need).is_file():
        check.reason = f"version {version} has no {need}"
        return check, cfg, None
    if (
        check.flavour == "python"
        and not (vdir / "model.onnx").is_file()
        and not (vdir / "macenko_impl.py").is_file()
    ):
        check.reason = f"version {version}: model.py has no model.onnx to serve"
        return check, cfg, None
    tile = _sample_tile(model_dir, cfg)
    check.tile_shape = tuple(tile.shape)
    if check.flavour == "tensorrt":
        return check, cfg, None
    try:
        ref = _reference(model_dir, vdir, cfg, tile)
    except StainbenchError as exc:
        check.reason = str(exc)
        return check, cfg, None
    except Exception as exc:  # a broken file: report it with its first line
        check.reason = f"in-process run failed: {str(exc).strip().splitlines()[0][:200]}"
        return check, cfg, None
    return check, cfg, ref


def check_repository(repo: str | Path, *, timeout: float = 120.0) -> CheckReport:
    """Serve ``repo`` with the real Triton server and check every model (see module doc).

    Returns a :class:`CheckReport`; raises :class:`ExportError` only when ``repo`` is not a
    repository at all, and :class:`~stainbench.errors.ServingError` when the server itself
    cannot start (not a model's fault).
    """
    from stainbench.serving import TritonClient, TritonServer

    repo_path = Path(repo)
    if not repo_path.is_dir():
        raise ExportError(f"model repository {repo_path} does not exist or is not a directory")
    dirs = sorted(p for p in repo_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise ExportError(f"model repository {repo_path} holds no models; run stainbench export")
    report = CheckReport(repo_path)
    pending: dict[str, tuple[ModelCheck, Any, np.ndarray | None]] = {}
    for d in dirs:
        check, cfg, ref = _static_check(d)
        report.models.append(check)
        if check.reason:
            continue
        if check.flavour != "python":
            check.status = "static-only"
            check.reason = (
                f"{check.flavour} needs the official Triton container; checked in-process"
            )
            continue
        pending[d.name] = (check, cfg, ref)

    while pending:
        try:
            with TritonServer(repo_path, models=sorted(pending), timeout=timeout) as server:
                report.server_seconds = server.startup_seconds
                with TritonClient(server.grpc_url) as client:
                    for name, (check, cfg, ref) in pending.items():
                        _serve_check(client, check, cfg, ref, repo_path / name)
            break
        except StainbenchError as exc:
            m = _FAILED.search(str(exc))
            if m is None or m.group(1) not in pending:
                raise
            check = pending.pop(m.group(1))[0]
            check.reason = f"Triton failed to load it: {m.group(2).strip()}"
    return report


def _serve_check(client: Any, check: ModelCheck, cfg: Any, ref: np.ndarray | None, d: Path) -> None:
    try:
        if not client.is_ready(check.name):
            check.reason = "loaded but not READY"
            return
        tile = _sample_tile(d, cfg)
        out = client.infer(check.name, tile)
    except StainbenchError as exc:
        check.reason = str(exc)
        return
    if out.dtype != np.uint8 or out.shape != tile.shape:
        check.reason = f"answered {out.dtype} {out.shape} for a {tile.shape} uint8 tile"
        return
    if ref is not None:
        diff = int(np.abs(out.astype(np.int16) - ref.astype(np.int16)).max())
        check.max_diff = diff
        if diff != 0:
            check.reason = f"served output differs from in-process by up to {diff} grey levels"
            return
    check.status = "ok"
