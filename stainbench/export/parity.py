"""The parity gate: ONNX Runtime must reproduce PyTorch before anything is served.

Checks, on real validation tiles and on random tiles:

- float path: ``max |ORT - torch| / max |torch|`` of the de-normalized float output (pixel
  units, before rounding) must be <= ``float_rtol``;
- uint8 path: ``max |ORT - torch|`` in grey levels must be <= ``uint8_atol``;
- batch independence: each tile's ORT output alone must match its output inside a batch of
  different tiles (same tolerances), so Triton's dynamic batching cannot change an answer.

The numbers are returned as a :class:`ParityReport` (saved in the export manifest); a failed
check raises :class:`~stainbench.errors.ExportError` naming the worst number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stainbench.errors import ExportError
from stainbench.export.onnx import OnnxTileModel, TileModule
from stainbench.export.profile import ParitySettings


@dataclass(frozen=True)
class ParityReport:
    """Parity numbers of one export (all maxima over the checked tiles).

    ``float_rel``: relative L-infinity error of the float output; ``uint8_max``: largest grey
    level difference; ``uint8_mismatch_frac``: fraction of uint8 values that differ at all;
    ``batch_*``: the same for alone-vs-in-batch ORT outputs.
    """

    tile: int
    val_tiles: int
    random_tiles: int
    val_source: str
    float_rel: float
    uint8_max: int
    uint8_mismatch_frac: float
    batch_size: int
    batch_float_rel: float
    batch_uint8_max: int
    float_rtol: float
    uint8_atol: int
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def float_rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    """``max |a - ref| / max |ref|`` (0 for identical arrays; ``max |ref|`` floored at 1e-12)."""
    diff = np.abs(a.astype(np.float64) - ref.astype(np.float64)).max()
    return float(diff / max(float(np.abs(ref).max()), 1e-12))


def uint8_error(a: np.ndarray, ref: np.ndarray) -> tuple[int, float]:
    """(max grey-level difference, fraction of values that differ)."""
    d = np.abs(a.astype(np.int16) - ref.astype(np.int16))
    return int(d.max()), float((d > 0).mean())


def random_tiles(n: int, tile: int, seed: int) -> np.ndarray:
    """``n`` uniform random uint8 tiles ``(n, tile, tile, 3)`` from ``seed``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, tile, tile, 3), dtype=np.uint8)


def run_parity_gate(
    translator: TileModule,
    parity_model: OnnxTileModel,
    val: np.ndarray | None,
    settings: ParitySettings,
    val_source: str = "",
) -> ParityReport:
    """Compare ``parity_model`` (ORT, two outputs) with ``translator`` (PyTorch).

    ``val``: real uint8 tiles ``(N, T, T, 3)`` (``T`` a multiple of the size multiple) or
    None. Random tiles of the same side (or ``settings.tile`` rounded up to the size
    multiple when there are no real ones) are added. Raises :class:`ExportError` on failure.
    """
    m = translator.size_multiple
    if val is not None and len(val):
        side = int(val.shape[1])
        real = val[: settings.val_tiles]
    else:
        side = -(-settings.tile // m) * m
        real = np.zeros((0, side, side, 3), np.uint8)
    rand = random_tiles(settings.random_tiles, side, settings.seed)
    tiles = np.concatenate([real, rand])
    if len(tiles) < 2:
        tiles = np.concatenate([tiles, random_tiles(2 - len(tiles), side, settings.seed + 1)])

    worst_rel, worst_u8, worst_frac = 0.0, 0, 0.0
    alone: list[tuple[np.ndarray, np.ndarray]] = []
    for i in range(len(tiles)):  # batch 1: PyTorch vs ORT
        t8, tf = translator.translate(tiles[i : i + 1])
        o8, of = parity_model.run_all(tiles[i : i + 1])
        worst_rel = max(worst_rel, float_rel_error(of, tf))
        u8, frac = uint8_error(o8, t8)
        worst_u8, worst_frac = max(worst_u8, u8), max(worst_frac, frac)
        alone.append((o8, of))

    # batch independence: the first `batch` tiles together (cycled if fewer), ORT vs alone
    n = settings.batch
    idx = [i % len(tiles) for i in range(n)]
    if len(set(idx)) < 2:
        raise ExportError("parity gate needs at least two different tiles")
    b8, bf = parity_model.run_all(tiles[idx])
    t8, tf = translator.translate(tiles[idx])
    worst_rel = max(worst_rel, float_rel_error(bf, tf))
    u8, frac = uint8_error(b8, t8)
    worst_u8, worst_frac = max(worst_u8, u8), max(worst_frac, frac)
    batch_rel, batch_u8 = 0.0, 0
    for j, i in enumerate(idx):
        batch_rel = max(batch_rel, float_rel_error(bf[j : j + 1], alone[i][1]))
        batch_u8 = max(batch_u8, uint8_error(b8[j : j + 1], alone[i][0])[0])

    failures = []
    if worst_rel > settings.float_rtol or worst_u8 > settings.uint8_atol:
        failures.append(
            f"ONNX Runtime vs PyTorch: float error {worst_rel:.2e} (limit "
            f"{settings.float_rtol:.0e}), uint8 max diff {worst_u8} (limit {settings.uint8_atol})"
        )
    if batch_rel > settings.float_rtol or batch_u8 > settings.uint8_atol:
        failures.append(
            f"a tile alone vs inside a batch of {n} different tiles: float error "
            f"{batch_rel:.2e}, uint8 max diff {batch_u8} (the output depends on batch-mates)"
        )
    passed = not failures
    report = ParityReport(
        tile=side,
        val_tiles=len(real),
        random_tiles=len(tiles) - len(real),
        val_source=val_source,
        float_rel=worst_rel,
        uint8_max=worst_u8,
        uint8_mismatch_frac=worst_frac,
        batch_size=n,
        batch_float_rel=batch_rel,
        batch_uint8_max=batch_u8,
        float_rtol=settings.float_rtol,
        uint8_atol=settings.uint8_atol,
        passed=passed,
    )
    if failures:
        raise ExportError(f"parity gate failed: {'; '.join(failures)}. Nothing was written")
    return report
