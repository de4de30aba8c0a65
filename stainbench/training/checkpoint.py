"""Checkpoints: plain data written atomically, loadable with ``torch.load(weights_only=True)``.

Layout (docs/CONTRACTS.md section 2)::

    {"format": "stainbench-checkpoint", "schema_version": 1,
     "family": "unet" | "pix2pix" | "cyclegan", "run_name": str, "step": int, "epoch": int,
     "recipe": {...resolved recipe...},
     "networks": {"G_AB": {"arch": "unet", "kwargs": {...}}, ...},
     "state": {"G_AB": state_dict, ..., "optim": ..., "sched": ..., "rng": ...},
     "normalization": {"A": Normalization.to_dict(), "B": Normalization.to_dict()},
     "data": {"store": str, "manifest_hash": str},
     "versions": {"stainbench": str, "torch": str}}

Every network named in ``networks`` has its ``state_dict`` under ``state[name]``. The other
``state`` entries (optimizers, schedulers, RNG states, the image pool) are only needed to
resume training.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stainbench import __version__
from stainbench.errors import ModelError
from stainbench.models import create_model, get_entry

FORMAT = "stainbench-checkpoint"
SCHEMA_VERSION = 1
FAMILIES = ("unet", "pix2pix", "cyclegan")
_REQUIRED = ("family", "run_name", "step", "epoch", "recipe", "networks", "state")


@dataclass(frozen=True)
class GeneratorInfo:
    """What export needs to know about a generator besides its weights.

    ``normalization``: ``{"A": dict, "B": dict}`` as written by ``Normalization.to_dict()``
    (A is the input domain, B the output domain of the G_AB generator); ``size_multiple``:
    tile height and width must be multiples of it; ``manifest_hash``: the training store's
    identity ("" if unknown).
    """

    family: str
    run_name: str
    network: str
    arch: str
    kwargs: dict[str, Any]
    in_channels: int
    out_channels: int
    size_multiple: int
    normalization: dict[str, Any]
    manifest_hash: str
    store: str
    step: int
    epoch: int


def versions() -> dict[str, str]:
    """Library versions recorded in every checkpoint."""
    return {"stainbench": str(__version__), "torch": str(torch.__version__)}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    ``format``, ``schema_version`` and ``versions`` are filled in when absent. A reader never
    sees a half-written file: it finds the old checkpoint or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "versions": versions()}
    data.update(payload)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises a one-line :class:`ModelError` for a missing file, a file that is not a
    stainbench checkpoint, a corrupt one, or one of another (newer) schema version.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the checkpoint ({exc.strerror})") from None
    if size == 0:
        raise ModelError(
            f"{path}: empty file, not a stainbench checkpoint; give a last.pt or best.pt "
            "written by 'stainbench train'"
        )
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise for a user
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise ModelError(f"{path}: cannot read the checkpoint ({exc.strerror})") from None
    except MemoryError:
        raise ModelError(f"{path}: not a readable stainbench checkpoint (out of memory)") from None
    except Exception as exc:
        # any failure of torch.load means "not readable": a corrupt pickle stream can raise
        # nearly anything (KeyError, IndexError, AttributeError, UnicodeDecodeError, ...)
        raise ModelError(
            f"{path}: not a readable stainbench checkpoint ({_why(exc, path)}); give a last.pt "
            "or best.pt written by 'stainbench train'"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelError(f"{path}: not a stainbench checkpoint (no '{FORMAT}' format marker)")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        hint = (
            "written by a newer stainbench; upgrade stainbench"
            if isinstance(version, int) and version > SCHEMA_VERSION
            else "unsupported"
        )
        raise ModelError(
            f"{path}: checkpoint schema version {version!r} ({hint}); this stainbench reads "
            f"version {SCHEMA_VERSION}"
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ModelError(f"{path}: checkpoint is missing {', '.join(missing)} (corrupt file?)")
    if data["family"] not in FAMILIES:
        raise ModelError(f"{path}: unknown model family {data['family']!r}")
    return data


def _why(exc: BaseException, path: Path) -> str:
    """One short line saying why ``torch.load`` failed on ``path``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds pickled objects ({found.group(1)}), not plain data"
    with path.open("rb") as fh:
        head = fh.read(4)
    if head == b"PK\x03\x04":  # torch.save's format: a zip archive holding */data.pkl
        if not zipfile.is_zipfile(path):
            return "truncated: the zip archive's directory at its end is missing"
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "corrupt zip archive"
        if not any(n.endswith("/data.pkl") for n in names):
            return "a zip archive, but not one written by torch.save"
    elif head[:1] != b"\x80":  # neither a zip archive nor a (legacy torch.save) pickle
        return "not a file written by torch.save"
    elif "WeightsUnpickler error" in text:
        return "a pickle file, but not a torch.save checkpoint of plain data"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return f"corrupt or truncated: {detail[:100]}"


def build_network(payload: dict[str, Any], name: str, where: str = "checkpoint") -> torch.nn.Module:
    """Rebuild network ``name`` of a checkpoint payload and load its weights (train mode)."""
    networks = payload.get("networks", {})
    if name not in networks:
        valid = ", ".join(sorted(networks)) or "none"
        raise ModelError(f"{where}: has no network {name!r} (it holds: {valid})")
    spec = networks[name]
    model = create_model(spec["arch"], **dict(spec.get("kwargs", {})))
    state = payload.get("state", {}).get(name)
    if state is None:
        raise ModelError(f"{where}: no weights for network {name!r}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        line = str(exc).strip().splitlines()[0]
        raise ModelError(
            f"{where}: weights of {name!r} do not fit its architecture: {line}"
        ) from None
    return model


def load_generator(
    path_or_payload: str | Path | dict[str, Any], name: str = "G_AB"
) -> tuple[torch.nn.Module, GeneratorInfo]:
    """The generator ``name`` of a checkpoint, in eval mode, on the CPU, plus its metadata.

    ``name`` is ``"G_AB"`` (A -> B; every family has it) or ``"G_BA"`` (CycleGAN only).
    For ``G_BA`` the normalization dict is swapped so that ``"A"`` is always the input domain.
    """
    if isinstance(path_or_payload, dict):
        payload, where = path_or_payload, "checkpoint"
    else:
        payload, where = load_checkpoint(path_or_payload), str(path_or_payload)
    spec = payload.get("networks", {}).get(name)
    if spec is not None and get_entry(spec["arch"]).role != "generator":
        raise ModelError(f"{where}: network {name!r} ({spec['arch']}) is not a generator")
    model = build_network(payload, name, where)
    model.eval()
    norm = dict(payload.get("normalization") or {})
    if name == "G_BA":
        norm = {"A": norm.get("B"), "B": norm.get("A")}
    kwargs = dict(spec.get("kwargs", {}))
    data = payload.get("data") or {}
    info = GeneratorInfo(
        family=payload["family"],
        run_name=payload["run_name"],
        network=name,
        arch=spec["arch"],
        kwargs=kwargs,
        in_channels=int(kwargs.get("in_channels", 3)),
        out_channels=int(kwargs.get("out_channels", 3)),
        size_multiple=int(getattr(model, "size_multiple", 1)),
        normalization=norm,
        manifest_hash=str(data.get("manifest_hash", "")),
        store=str(data.get("store", "")),
        step=int(payload["step"]),
        epoch=int(payload["epoch"]),
    )
    return model, info
