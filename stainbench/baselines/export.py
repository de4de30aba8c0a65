"""Classical baselines as served models: ``reinhard`` and ``macenko``.

Both are fitted on reference tiles of the target domain at export time and written into the
same Triton repository as the learned models, with the same contract (``INPUT`` uint8
``(B, H, W, 3)`` -> ``OUTPUT`` uint8, any tile size, ``stainbench.size_multiple`` 1):

- ``reinhard`` is an ONNX graph (per-tile LAB statistics are reductions, the rest is
  element-wise), exported and parity-gated like a generator, in the profile's flavour;
- ``macenko`` needs an eigen-decomposition and percentiles per tile, which ONNX has no
  operators for: it is a python-backend model running the numpy implementation
  (always ``KIND_CPU``, whatever the profile's flavour).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from stainbench.config import to_dict
from stainbench.errors import DataError, ExportError
from stainbench.export import triton
from stainbench.export.exporter import ExportResult, tool_versions, warmup_tile
from stainbench.export.profile import ExportProfile
from stainbench.export.triton import MANIFEST_NAME, ModelIdentity

BASELINES = ("reinhard", "macenko")


@dataclass(frozen=True)
class ReferenceTiles:
    """Reference tiles of the target domain (uint8 ``(N, H, W, 3)``) and their origin."""

    tiles: np.ndarray
    source: str
    manifest_hash: str = ""


def load_reference(
    store: str | Path, n: int = 16, split: str = "train", domain: str = "B"
) -> ReferenceTiles:
    """Up to ``n`` uint8 tiles of ``domain`` (the target stain) from a tile store's ``split``."""
    from stainbench.data.store import open_store

    s = open_store(store)
    if s.kind == "volume":
        raise DataError(f"{store}: a volume store has no reference tiles; use a tile store")
    if split not in s.splits:
        raise DataError(f"{store}: no split {split!r} (has {', '.join(s.splits)})")
    arr = s.array(split, domain)
    if arr.dtype != np.uint8 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise DataError(f"{store}: {split}/{domain} is {arr.dtype} {arr.shape}, not uint8 RGB")
    tiles = np.asarray(arr[: min(n, arr.shape[0])])
    return ReferenceTiles(tiles, f"{store} {split}/{domain}[0:{len(tiles)}]", s.manifest_hash)


def _manifest(name: str, version: int, flavour: str, ref: ReferenceTiles, **extra: Any) -> str:
    manifest = {
        "schema_version": 1,
        "model": name,
        "version": version,
        "flavour": flavour,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"baseline": name, "reference": ref.source, "reference_tiles": len(ref.tiles)},
        "data": {"manifest_hash": ref.manifest_hash},
        "tile": {
            "input": "INPUT uint8 (B, H, W, 3) RGB",
            "output": "OUTPUT uint8 (B, H, W, 3) RGB",
            "size_multiple": 1,
        },
        "versions": tool_versions(),
        **extra,
    }
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def export_reinhard(
    ref: ReferenceTiles,
    repo: str | Path,
    profile: ExportProfile | None = None,
    *,
    name: str = "reinhard",
    force: bool = False,
) -> ExportResult:
    """Fit Reinhard on ``ref`` and export it as an ONNX tile model (profile's flavour)."""
    from stainbench.baselines.reinhard import ReinhardModule, fit_reinhard, reinhard_transfer
    from stainbench.export.onnx import OnnxTileModel, export_onnx, metadata_json
    from stainbench.export.parity import run_parity_gate, uint8_error

    profile = profile or ExportProfile()
    if profile.flavour == "tensorrt":
        raise ExportError(
            "baselines are exported for the CPU flavours (python, onnxruntime); build a "
            "TensorRT engine for reinhard from its model.onnx on the GPU machine"
        )
    target = fit_reinhard(ref.tiles)
    module = ReinhardModule(target).eval()
    identity = ModelIdentity("reinhard", 1, ref.manifest_hash)
    config = triton.build_config(name, profile.flavour, profile.triton, identity)
    version, _ = triton.plan_version(repo, name, "reinhard", force=force)
    with tempfile.TemporaryDirectory(prefix="stainbench-reinhard-") as tmp:
        meta = {"family": "reinhard", "target": metadata_json(target.to_dict())}
        files = export_onnx(module, tmp, opset=profile.opset, metadata=meta)
        report = run_parity_gate(
            module,
            OnnxTileModel(files.parity),
            ref.tiles[: profile.parity.val_tiles],
            profile.parity,
            ref.source,
        )
        # the torch graph must also match the numpy reference implementation
        sample = ref.tiles[: max(1, profile.parity.val_tiles)]
        ref8 = reinhard_transfer(sample, target)
        got8, _ = module.translate(sample)
        u8, frac = uint8_error(got8, ref8)
        if u8 > 1:
            raise ExportError(
                f"reinhard graph differs from the numpy reference by {u8} grey levels"
            )
        vfiles: dict[str, Path | bytes | str] = {triton.MODEL_FILES[profile.flavour]: files.model}
        if profile.flavour == "python":
            vfiles["model.py"] = triton.python_model_source()
        vfiles[MANIFEST_NAME] = _manifest(
            name,
            version,
            profile.flavour,
            ref,
            target=target.to_dict(),
            parity={**report.to_dict(), "numpy_uint8_max": u8, "numpy_mismatch_frac": frac},
            profile=to_dict(profile),
        )
        side = profile.triton.warmup_tile
        written = triton.write_model(
            repo,
            name,
            config,
            vfiles,
            warmup_tile=warmup_tile(side, ref.tiles, profile.parity.seed),
            version=version,
            force=force,
        )
    return ExportResult(
        name,
        written.version,
        profile.flavour,
        "reinhard",
        1,
        written.model_dir,
        written.version_dir,
        json.loads(str(vfiles[MANIFEST_NAME])),
    )


def export_macenko(
    ref: ReferenceTiles,
    repo: str | Path,
    profile: ExportProfile | None = None,
    *,
    name: str = "macenko",
    force: bool = False,
) -> ExportResult:
    """Fit Macenko on ``ref`` and export it as a python-backend (numpy) model."""
    from stainbench.baselines.macenko import fit_macenko, macenko_transfer

    profile = profile or ExportProfile()
    try:
        target = fit_macenko(ref.tiles)
    except ValueError as exc:
        raise DataError(f"{ref.source}: {exc}") from None
    settings = dataclasses.replace(profile.triton, instance_kind="KIND_CPU")
    identity = ModelIdentity("macenko", 1, ref.manifest_hash)
    config = triton.build_config(name, "python", settings, identity)
    del config.parameters["stainbench.onnx_file"]
    del config.parameters["stainbench.intra_op_threads"]
    version, _ = triton.plan_version(repo, name, "macenko", force=force)
    pkg = resources.files("stainbench.baselines")
    sample = ref.tiles[:2]
    macenko_transfer(sample, target)  # fails here rather than in the server if it cannot run
    vfiles: dict[str, Path | bytes | str] = {
        "model.py": pkg.joinpath("triton_macenko_model.py").read_text("utf-8"),
        "macenko_impl.py": pkg.joinpath("macenko.py").read_text("utf-8"),
        "macenko_target.json": json.dumps(target.to_dict(), indent=2) + "\n",
        MANIFEST_NAME: _manifest(
            name,
            version,
            "python",
            ref,
            target=target.to_dict(),
            parity={"note": "served by the same numpy code as in-process; no conversion"},
            profile=to_dict(profile),
        ),
    }
    written = triton.write_model(
        repo,
        name,
        config,
        vfiles,
        warmup_tile=warmup_tile(settings.warmup_tile, ref.tiles, profile.parity.seed),
        version=version,
        force=force,
    )
    return ExportResult(
        name,
        written.version,
        "python",
        "macenko",
        1,
        written.model_dir,
        written.version_dir,
        json.loads(str(vfiles[MANIFEST_NAME])),
    )


def export_baselines(
    reference: str | Path | ReferenceTiles,
    repo: str | Path = "model_repository",
    profile: ExportProfile | None = None,
    *,
    names: tuple[str, ...] = BASELINES,
    n_reference: int = 16,
    force: bool = False,
) -> list[ExportResult]:
    """Fit and export the classical baselines ``names`` on reference tiles of the target
    domain (a tile store path: its ``train`` split, domain ``B``; or :class:`ReferenceTiles`)."""
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ExportError(f"unknown baseline {unknown[0]!r} (known: {', '.join(BASELINES)})")
    ref = (
        reference
        if isinstance(reference, ReferenceTiles)
        else load_reference(reference, n_reference)
    )
    out = []
    for n in names:
        fn = export_reinhard if n == "reinhard" else export_macenko
        out.append(fn(ref, repo, profile, name=n, force=force))
    return out
