"""``export_checkpoint``: a training checkpoint in, one served model version out.

Steps (all in a temporary folder; the repository is touched only at the very end, so a failed
check writes nothing):

1. load the A->B generator and its statistics
   (:func:`~stainbench.training.checkpoint.load_generator`);
2. wrap it as a uint8 tile model and export ONNX (:mod:`stainbench.export.onnx`);
3. parity gate on real validation tiles + random tiles (:mod:`stainbench.export.parity`);
4. (tensorrt flavour) build and gate an engine (:mod:`stainbench.export.tensorrt`);
5. write ``export_manifest.json`` and move the version into the repository
   (:func:`stainbench.export.triton.write_model`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import platform
import tempfile
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from stainbench import __version__
from stainbench.config import to_dict
from stainbench.errors import DataError, ExportError, ModelError
from stainbench.export import triton
from stainbench.export.profile import ExportProfile
from stainbench.export.triton import MANIFEST_NAME, ModelIdentity

log = logging.getLogger(__name__)

#: Model families this exporter knows (their generator maps A to B as ``G_AB``).
KNOWN_FAMILIES = ("unet", "pix2pix", "cyclegan")
MANIFEST_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ExportResult:
    """One exported model version."""

    name: str
    version: int
    flavour: str
    family: str
    size_multiple: int
    model_dir: Path
    version_dir: Path
    manifest: dict[str, Any]

    @property
    def parity(self) -> dict[str, Any]:
        return dict(self.manifest.get("parity") or {})


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the checkpoint of a run directory (``best.pt``, else ``last.pt``,
    else the newest ``*.pt``)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        found = sorted(p.glob("*.pt"), key=lambda f: f.stat().st_mtime)
        if found:
            return found[-1]
        raise ModelError(f"{p}: run directory holds no checkpoint (*.pt)")
    raise ModelError(f"{p}: no such checkpoint file or run directory")


def require_8bit_model(normalization: dict[str, Any], where: str) -> None:
    """Refuse a generator trained on more than 8-bit data (served models take uint8 tiles).

    The checkpoint's domain-A normalization is in raw pixel units. 8-bit data bound it: a
    ``range`` or ``percentile`` window ``offset +- scale`` lies within [0, 255], and a
    ``zscore`` mean and standard deviation satisfy the Bhatia-Davis inequality
    ``std^2 <= (255 - mean) * mean``. A model whose statistics break the bound was trained on
    16-bit (or rescaled) data: uint8 tiles would reach it as almost-black inputs.
    """
    norm = normalization.get("A") or {}
    mode = norm.get("mode")
    offsets = [float(v) for v in norm.get("offset") or ()]
    scales = [float(v) for v in norm.get("scale") or ()]
    if not offsets or len(offsets) != len(scales):
        return
    tol = 0.5  # statistics of integers, rounded
    if mode == "zscore":
        bad = any(
            not -tol <= m <= 255 + tol or sd * sd > (255 - m) * m + tol * 255
            for m, sd in zip(offsets, scales, strict=True)
        )
    else:
        bad = any(
            o - sc < -tol or o + sc > 255 + tol for o, sc in zip(offsets, scales, strict=True)
        )
    if bad:
        top = max(o + sc for o, sc in zip(offsets, scales, strict=True))
        raise ExportError(
            f"{where}: trained on more than 8-bit data (its {mode} normalization of domain A "
            f"reaches raw value {top:.0f}), but served models take uint8 RGB tiles; train on "
            "an 8-bit store to serve it"
        )


def planned_model_name(checkpoint: str | Path, name: str | None = None) -> tuple[str, Path]:
    """The served model name an export of ``checkpoint`` gets, and the checkpoint file.

    One-line errors as :func:`export_checkpoint` for a missing or unreadable checkpoint.
    """
    from stainbench.training.checkpoint import load_checkpoint

    ckpt = resolve_checkpoint(checkpoint)
    if name is not None:
        return triton.validate_model_name(name), ckpt
    payload = load_checkpoint(ckpt)
    run_name = str(payload.get("run_name") or "")
    family = str(payload.get("family") or "")
    return triton.validate_model_name(triton.default_model_name(family, run_name)), ckpt


def _previous_source(model_dir: Path) -> str | None:
    """The checkpoint that the newest exported version of ``model_dir`` came from, if known."""
    versions = triton.versions_of(model_dir)
    if not versions:
        return None
    try:
        manifest = json.loads((model_dir / str(versions[-1]) / MANIFEST_NAME).read_text())
        return str(manifest["source"]["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def tool_versions() -> dict[str, str]:
    """Versions of the tools that made an export (recorded in the manifest)."""
    out = {"stainbench": __version__, "python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxruntime", "onnxscript", "tritonclient", "numpy"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[dist] = ""
    return out


def load_val_tiles(
    store_path: str, n: int, side: int, multiple: int
) -> tuple[np.ndarray | None, str]:
    """Up to ``n`` real domain-A tiles of the store's ``val`` split, centre-cropped to ``side``
    (or to the largest multiple of ``multiple`` that fits). Returns ``(tiles or None, source)``
    where ``source`` says where they came from or why there are none."""
    if n <= 0:
        return None, "none requested"
    if not store_path:
        return None, "checkpoint names no data store"
    try:
        from stainbench.data.store import open_store

        store = open_store(store_path)
        if store.kind == "volume":
            return None, f"{store_path}: volume store (no tile arrays)"
        split = "val" if "val" in store.splits else store.splits[-1]
        arr = store.array(split, "A")
    except DataError as exc:
        return None, f"store unavailable ({exc})"
    if arr.dtype != np.uint8 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        return None, f"{store_path}: {split}/A is {arr.dtype} {tuple(arr.shape)}, not uint8 RGB"
    h, w = int(arr.shape[1]), int(arr.shape[2])
    s = min(side, h, w) // multiple * multiple
    if s < 1:
        return None, f"{store_path}: tiles {h}x{w} are smaller than the size multiple {multiple}"
    tiles = np.asarray(arr[: min(n, arr.shape[0])])
    top, left = (h - s) // 2, (w - s) // 2
    tiles = np.ascontiguousarray(tiles[:, top : top + s, left : left + s, :])
    return tiles, f"{store_path} {split}/A[0:{len(tiles)}] centre {s}x{s}"


def warmup_tile(side: int, val: np.ndarray | None, seed: int) -> np.ndarray:
    """A uint8 ``(side, side, 3)`` sample tile: a real one (cropped, or mirrored out to
    ``side`` when smaller) when there is one, else uniform random."""
    if val is not None and len(val):
        tile = val[0]
        ph, pw = max(0, side - tile.shape[0]), max(0, side - tile.shape[1])
        if ph or pw:
            tile = np.pad(tile, ((0, ph), (0, pw), (0, 0)), mode="symmetric")
        return np.ascontiguousarray(tile[:side, :side, :])
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def export_checkpoint(
    checkpoint: str | Path,
    repo: str | Path = "model_repository",
    profile: ExportProfile | None = None,
    *,
    name: str | None = None,
    version: int | None = None,
    force: bool = False,
    network: str = "G_AB",
) -> ExportResult:
    """Export one checkpoint (or run directory) into the Triton repository ``repo``.

    Raises a one-line :class:`~stainbench.errors.StainbenchError` for a checkpoint that is not
    ours or corrupt, an unknown family, a repository path that is a file, an existing version
    or model (without ``force``), TensorRT asked for where it cannot run, or a failed parity
    gate; nothing is written to ``repo`` then.
    """
    from stainbench.export.onnx import OnnxTileModel, export_onnx, make_translator, metadata_json
    from stainbench.export.parity import run_parity_gate
    from stainbench.training.checkpoint import load_checkpoint, load_generator

    profile = profile or ExportProfile()
    if profile.flavour == "tensorrt":
        from stainbench.export.tensorrt import require_tensorrt

        require_tensorrt()
    repo_path = Path(repo)
    if repo_path.exists() and not repo_path.is_dir():
        raise ExportError(f"model repository {repo_path} is a file, not a directory: use --repo")
    ckpt = resolve_checkpoint(checkpoint)
    payload = load_checkpoint(ckpt)
    if payload.get("family") not in KNOWN_FAMILIES:
        raise ModelError(
            f"{ckpt}: family {payload.get('family')!r} cannot be exported "
            f"(known: {', '.join(KNOWN_FAMILIES)})"
        )
    try:
        generator, info = load_generator(payload, network)
    except ModelError as exc:  # its messages say "checkpoint: ..."; name the file instead
        raise ModelError(str(exc).replace("checkpoint:", f"{ckpt}:", 1)) from None
    if info.in_channels != 3 or info.out_channels != 3:
        raise ExportError(
            f"{ckpt}: served models take and return RGB tiles, but {network} maps "
            f"{info.in_channels} to {info.out_channels} channels (2.5D volume and grayscale "
            "models train and validate, but are not served)"
        )
    require_8bit_model(info.normalization, str(ckpt))
    model_name = triton.validate_model_name(
        name or triton.default_model_name(info.family, info.run_name)
    )
    multiple = max(1, info.size_multiple)
    settings = profile.triton
    warm_side = round_up(settings.warmup_tile, multiple)
    settings = dataclasses.replace(settings, warmup_tile=warm_side)
    identity = ModelIdentity(info.family, multiple, info.manifest_hash)
    config = triton.build_config(model_name, profile.flavour, settings, identity)
    version, _ = triton.plan_version(
        repo_path, model_name, info.family, version=version, force=force
    )

    side = round_up(profile.parity.tile, multiple)
    val, val_source = load_val_tiles(info.store, profile.parity.val_tiles, side, multiple)
    if val is None:
        log.warning("%s: the parity gate runs on random tiles only: %s", model_name, val_source)
    previous = _previous_source(repo_path / model_name)
    if previous is not None and Path(previous).parent != ckpt.resolve().parent:
        log.warning(
            "model %s: version %d comes from %s, the versions before it from %s; Triton "
            "serves the newest version only (use --name to keep both runs served)",
            model_name,
            version,
            ckpt.resolve().parent,
            Path(previous).parent,
        )
    translator = make_translator(generator, info.normalization, multiple, str(ckpt))
    meta = {
        "family": info.family,
        "run_name": info.run_name,
        "manifest_hash": info.manifest_hash,
        "normalization": metadata_json(info.normalization),
    }
    with tempfile.TemporaryDirectory(prefix="stainbench-export-") as tmp:
        files = export_onnx(
            translator, tmp, opset=profile.opset, exporter=profile.exporter, metadata=meta
        )
        parity_model = OnnxTileModel(files.parity)
        report = run_parity_gate(translator, parity_model, val, profile.parity, val_source)
        version_files: dict[str, Path | bytes | str] = {}
        trt_info: dict[str, Any] | None = None
        if profile.flavour == "tensorrt":
            from stainbench.export.tensorrt import build_checked_engine

            t = profile.tensorrt
            tiles = val[: t.max_batch] if val is not None else None
            if tiles is None or not t.min_tile <= tiles.shape[1] <= t.max_tile:
                from stainbench.export.parity import random_tiles

                tiles = random_tiles(min(t.opt_batch, 4), t.opt_tile, profile.parity.seed)
            plan, engine, trt_parity = build_checked_engine(
                files.model, OnnxTileModel(files.model), tiles, t
            )
            version_files[triton.MODEL_FILES["tensorrt"]] = plan
            trt_info = {"engine": engine.to_dict(), "parity": trt_parity.to_dict()}
        else:
            version_files[triton.MODEL_FILES[profile.flavour]] = files.model
        if profile.flavour == "python":
            version_files["model.py"] = triton.python_model_source()
        manifest = {
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "model": model_name,
            "version": version,
            "flavour": profile.flavour,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source": {
                "checkpoint": str(ckpt.resolve()),
                "sha256": sha256_file(ckpt),
                "family": info.family,
                "run_name": info.run_name,
                "network": info.network,
                "arch": info.arch,
                "kwargs": info.kwargs,
                "step": info.step,
                "epoch": info.epoch,
            },
            "data": {"store": info.store, "manifest_hash": info.manifest_hash},
            "normalization": info.normalization,
            "tile": {
                "input": "INPUT uint8 (B, H, W, 3) RGB",
                "output": "OUTPUT uint8 (B, H, W, 3) RGB",
                "size_multiple": multiple,
            },
            "onnx": {
                "opset": profile.opset,
                "exporter": profile.exporter,
                "sha256": sha256_file(files.model),
            },
            "parity": report.to_dict(),
            "tensorrt": trt_info,
            "profile": to_dict(profile),
            "versions": tool_versions(),
        }
        version_files[MANIFEST_NAME] = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        written = triton.write_model(
            repo_path,
            model_name,
            config,
            version_files,
            warmup_tile=warmup_tile(warm_side, val, profile.parity.seed),
            version=version,
            force=force,
        )
    return ExportResult(
        name=model_name,
        version=written.version,
        flavour=profile.flavour,
        family=info.family,
        size_multiple=multiple,
        model_dir=written.model_dir,
        version_dir=written.version_dir,
        manifest=manifest,
    )
