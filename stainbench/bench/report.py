"""The comparison report: results.json, per_tile.csv, report.md, PNG plots, the terminal table.

:class:`CompareResult` is what :func:`stainbench.bench.compare.run_compare` returns, possibly
incomplete (an error or Ctrl-C part-way); :func:`write_report` writes whatever it holds:

``OUT/results.json``
    everything: run settings, machine, versions, val set, per-model info, quality summary
    (means, bootstrap intervals, relative differences to the baseline), latency per model and
    concurrency, served-vs-local parity, per-tile values, ``complete`` and ``incomplete_reason``.
    Non-finite numbers are written as ``null`` (nan) or the strings ``"inf"``/``"-inf"``.
``OUT/per_tile.csv``
    one row per (model, tile): ``model, tile, name, ssim, psnr, mae, hist_kl, stain_pearson,
    stain_dice``.
``OUT/report.md``
    the tables in Markdown, the settings, and the plots.
``OUT/quality_vs_latency.png``, ``latency_cdf.png``, ``throughput.png``, ``examples.png``
    plots (matplotlib, Agg); a plot without data (e.g. no latency measured) is not written,
    and one left by an earlier report in the same folder is removed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from stainbench.bench.quality import IDENTITY, QualityResult
from stainbench.jsonsafe import jsonable
from stainbench.metrics import METRICS

#: Display names and formats of the quality metrics.
METRIC_LABELS: dict[str, str] = {
    "ssim": "SSIM",
    "psnr": "PSNR dB",
    "mae": "MAE",
    "hist_kl": "hist KL",
    "stain_pearson": "stain r",
    "stain_dice": "stain Dice",
}
_FMT: dict[str, str] = {
    "ssim": "{:.3f}",
    "psnr": "{:.2f}",
    "mae": "{:.2f}",
    "hist_kl": "{:.3f}",
    "stain_pearson": "{:.3f}",
    "stain_dice": "{:.3f}",
}
#: Metrics whose relative difference to the baseline is shown in the tables (all are in
#: results.json).
DELTA_METRICS: tuple[str, ...] = ("ssim", "stain_dice")
#: Latency columns (row key -> (label, larger is better)).
LATENCY_COLUMNS: dict[str, tuple[str, bool]] = {
    "p50_ms": ("p50 ms", False),
    "p95_ms": ("p95 ms", False),
    "p99_ms": ("p99 ms", False),
    "throughput": ("tiles/s", True),
}


@dataclass
class ExampleTiles:
    """A few val tiles for the image grid: uint8 ``(n, H, W, 3)`` each, and their names."""

    names: list[str]
    inputs: np.ndarray
    targets: np.ndarray
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class CompareResult:
    """Everything one comparison measured (possibly incomplete).

    ``latency``: one dict per (model, concurrency) with at least ``model``, ``concurrency``,
    ``throughput`` (tiles/s), ``p50_ms``, ``p90_ms``, ``p95_ms``, ``p99_ms``, ``stable``; more
    keys (server-side split, client CPU) are kept as they are. ``latency_samples``: model ->
    concurrency -> per-request latencies in ms (for the CDF). ``parity``: model -> dict with
    ``ok`` (bool), ``max_abs_diff`` (grey levels), ``same_batch_identical`` and details.
    """

    settings: dict[str, Any]
    valset: dict[str, Any]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    quality: QualityResult | None = None
    per_tile: list[dict[str, Any]] = field(default_factory=list)
    tile_names: list[str] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    latency_samples: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    examples: ExampleTiles | None = None
    complete: bool = True
    incomplete_reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    finished: str | None = None

    def mark_incomplete(self, reason: str) -> None:
        """Record why the run stopped early (the first reason wins)."""
        if self.complete:
            self.complete = False
            self.incomplete_reason = reason

    def parity_mismatches(self) -> list[str]:
        """One line per model whose served output differs from in-process ONNX Runtime."""
        return [
            f"{model}: {p.get('detail', '')}"
            for model, p in self.parity.items()
            if p.get("ok") is False
        ]

    def latency_at(self, model: str, concurrency: int) -> dict[str, Any] | None:
        for row in self.latency:
            if row.get("model") == model and int(row.get("concurrency", -1)) == concurrency:
                return row
        return None

    def best_throughput(self, model: str) -> dict[str, Any] | None:
        rows = [r for r in self.latency if r.get("model") == model]
        return max(rows, key=lambda r: _num(r.get("throughput"))) if rows else None

    def row_models(self) -> list[str]:
        """Models in table order: measured quality first (identity first), then latency-only."""
        names: list[str] = []
        if self.quality is not None:
            names += [m for m in self.quality.models if m == IDENTITY]
            names += [m for m in self.quality.models if m != IDENTITY]
        for m in list(self.models) + [r["model"] for r in self.latency]:
            if m not in names:
                names.append(m)
        return names

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "stainbench-compare",
            "schema_version": 1,
            "complete": self.complete,
            "incomplete_reason": self.incomplete_reason,
            "started": self.started,
            "finished": self.finished,
            "settings": self.settings,
            "machine": machine_info(),
            "versions": versions(),
            "val_set": self.valset,
            "models": self.models,
            "quality": self.quality.to_dict() if self.quality is not None else None,
            "latency": self.latency,
            "latency_samples_ms": {
                m: {str(c): [round(float(v), 4) for v in xs] for c, xs in by_c.items()}
                for m, by_c in self.latency_samples.items()
            },
            "parity": self.parity,
            "warnings": self.warnings,
            "tile_names": self.tile_names,
            "per_tile": self.per_tile,
        }


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def machine_info() -> dict[str, Any]:
    """CPU model, core count, memory, load and OS of this machine."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor()
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - psutil is a dependency
        pass
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def versions() -> dict[str, str]:
    """Versions of stainbench and the libraries that determine the numbers."""
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in (
        "stainbench",
        "numpy",
        "scikit-image",
        "onnxruntime",
        "tritonclient",
        "nvidia-pytriton",
        "matplotlib",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# ----------------------------------------------------------------------------- JSON/CSV


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(result: CompareResult, path: Path) -> None:
    _write_atomic(path, json.dumps(jsonable(result.to_dict()), indent=2, allow_nan=False) + "\n")


def write_per_tile_csv(result: CompareResult, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "tile", "name", *METRICS])
        for row in result.per_tile:
            t = int(row["tile"])
            name = result.tile_names[t] if t < len(result.tile_names) else ""
            writer.writerow(
                [row["model"], t, name, *(_csv_num(row.get(m, float("nan"))) for m in METRICS)]
            )
    os.replace(tmp, path)


def _csv_num(v: Any) -> str:
    v = _num(v)
    return "nan" if math.isnan(v) else ("inf" if v == math.inf else repr(round(v, 6)))


# ------------------------------------------------------------------------------- tables
@dataclass
class Cell:
    """One table cell: its text and the number used to find the column's best."""

    text: str
    value: float = float("nan")


def table_rows(result: CompareResult) -> tuple[list[str], list[list[Cell]], list[bool | None]]:
    """Header, rows and per-column "larger is better" (None: not ranked) of the main table."""
    q = result.quality
    header = ["model"]
    better: list[bool | None] = [None]
    if q is not None:
        for m in METRICS:
            header.append(METRIC_LABELS[m])
            better.append(METRICS[m])
        if q.baseline:
            for m in DELTA_METRICS:
                header.append(f"Δ {METRIC_LABELS[m]} vs {q.baseline}")
                better.append(METRICS[m])
    has_latency = bool(result.latency)
    if has_latency:
        for _key, (label, larger) in LATENCY_COLUMNS.items():
            header.append(f"{label} (c=1)" if label != "tiles/s" else "best tiles/s")
            better.append(larger)
    if result.parity:
        header.append("parity")
        better.append(None)

    rows: list[list[Cell]] = []
    for model in result.row_models():
        row = [Cell(model)]
        if q is not None:
            summ = q.summary.get(model)
            for m in METRICS:
                if summ is None or m not in summ.mean or summ.mean[m].n == 0:
                    row.append(Cell("-"))
                    continue
                iv = summ.mean[m]
                f = _FMT[m]
                row.append(
                    Cell(
                        f"{f.format(iv.value)} [{f.format(iv.low)}, {f.format(iv.high)}]", iv.value
                    )
                )
            if q.baseline:
                for m in DELTA_METRICS:
                    rel = summ.vs_baseline.get(m) if summ is not None else None
                    if model == q.baseline:  # ranks as 0 %: a star here means none beat it
                        row.append(Cell("baseline", 0.0))
                        continue
                    if rel is None or rel.n == 0:
                        row.append(Cell("-"))
                        continue
                    if not math.isfinite(rel.value):  # the baseline's mean is 0
                        row.append(Cell("n/a (baseline 0)"))
                        continue
                    sig = "" if rel.excludes(0.0) else " (ns)"
                    row.append(
                        Cell(f"{rel.value:+.1%} [{rel.low:+.1%}, {rel.high:+.1%}]{sig}", rel.value)
                    )
        if has_latency:
            c1 = result.latency_at(model, 1) or _lowest_concurrency(result, model)
            best = result.best_throughput(model)
            for key in LATENCY_COLUMNS:
                src = best if key == "throughput" else c1
                if src is None:
                    row.append(Cell("-"))
                    continue
                v = _num(src.get(key))
                text = f"{v:.1f}"
                if key == "throughput":
                    text += f" @c={src.get('concurrency')}"
                if src.get("stable") is False:
                    text += " (unstable)"
                row.append(Cell(text, v))
        if result.parity:
            p = result.parity.get(model)
            if p is None or p.get("ok") is None:
                row.append(Cell("n/a"))
            elif p.get("ok"):
                row.append(Cell(f"ok (max {p.get('max_abs_diff', 0)})"))
            else:
                row.append(Cell(f"MISMATCH (max {p.get('max_abs_diff', '?')})"))
        rows.append(row)
    return header, rows, better


def _lowest_concurrency(result: CompareResult, model: str) -> dict[str, Any] | None:
    rows = [r for r in result.latency if r.get("model") == model]
    return min(rows, key=lambda r: int(r.get("concurrency", 0))) if rows else None


def best_indices(rows: list[list[Cell]], better: list[bool | None]) -> dict[int, set[int]]:
    """Column -> indices of rows holding the best finite value (ties all marked)."""
    out: dict[int, set[int]] = {}
    for col, larger in enumerate(better):
        if larger is None:
            continue
        vals = [(i, r[col].value) for i, r in enumerate(rows) if math.isfinite(r[col].value)]
        if len(vals) < 2:
            continue
        target = max(v for _, v in vals) if larger else min(v for _, v in vals)
        out[col] = {i for i, v in vals if v == target}
    return out


def _rich_cell(cell: Cell, is_best: bool) -> str:
    """Rich markup of a cell: an interval goes on a second, dim line; the best gets ★."""
    head, sep, tail = cell.text.partition(" [")
    head = head.replace("[", "\\[")
    if is_best:
        head = f"[bold green]{head} ★[/]"
    elif cell.text.startswith("MISMATCH"):
        head = f"[bold red]{head}[/]"
    if sep:  # "[lo, hi]" -> "lo–hi" keeps the column narrow
        interval, _, rest = tail.partition("]")
        low, _, high = interval.partition(", ")
        head += f"\n[dim]{low}–{high}[/]{rest}"
    return head


def render_table(result: CompareResult, console: Any) -> None:
    """Print the results with rich: a quality table and a latency/parity table.

    Means carry their bootstrap interval on a second line; the best value of each column is
    bold green with ★.
    """
    from rich.table import Table

    header, rows, better = table_rows(result)
    best = best_indices(rows, better)
    fidelity = {METRIC_LABELS[m] for m in ("ssim", "psnr", "mae")}
    colour = {METRIC_LABELS[m] for m in ("hist_kl", "stain_pearson", "stain_dice")}
    delta_ssim = f"Δ {METRIC_LABELS['ssim']} "
    fid_cols = [i for i, h in enumerate(header) if h in fidelity or h.startswith(delta_ssim)]
    colour_cols = [
        i
        for i, h in enumerate(header)
        if h in colour or (h.startswith("Δ") and not h.startswith(delta_ssim))
    ]
    other_cols = [i for i in range(1, len(header)) if i not in fid_cols + colour_cols]
    title = "stainbench compare"
    if not result.complete:
        title += f" — INCOMPLETE: {result.incomplete_reason}"
    groups = [
        ("pixel fidelity", fid_cols),
        ("colour and stain", colour_cols),
        ("latency and parity", other_cols),
    ]
    for k, (name, cols) in enumerate(g for g in groups if g[1]):
        table = Table(title=f"{title}: {name}" if k == 0 else name, title_justify="left")
        table.add_column("model", no_wrap=True)
        for i in cols:
            table.add_column(header[i], justify="right")
        for ri, row in enumerate(rows):
            cells = [row[0].text] + [_rich_cell(row[i], ri in best.get(i, set())) for i in cols]
            table.add_row(*cells)
        console.print(table)
    q = result.quality
    if q is not None:
        n_tiles = max((m.n_tiles for m in q.summary.values()), default=0)
        console.print(
            f"means over {n_tiles} val tiles; second line: {q.confidence:.0%} "
            f"bootstrap interval (percentile, {q.n_boot} resamples, seed {q.seed}); ★ best"
            + (
                f"; Δ: relative to {q.baseline}, paired bootstrap, (ns): interval includes 0"
                if q.baseline
                else ""
            ),
            highlight=False,
        )


def markdown_table(result: CompareResult) -> str:
    header, rows, better = table_rows(result)
    best = best_indices(rows, better)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for ri, row in enumerate(rows):
        cells = []
        for ci, cell in enumerate(row):
            cells.append(f"**{cell.text}**" if ri in best.get(ci, set()) else cell.text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _latency_markdown(result: CompareResult) -> str:
    cols = [
        ("model", "model"),
        ("concurrency", "c"),
        ("throughput", "tiles/s"),
        ("p50_ms", "p50"),
        ("p90_ms", "p90"),
        ("p95_ms", "p95"),
        ("p99_ms", "p99"),
        ("server_queue_ms", "queue"),
        ("server_compute_input_ms", "in"),
        ("server_compute_infer_ms", "infer"),
        ("server_compute_output_ms", "out"),
        ("server_batch", "batch"),
        ("client_cpu", "client CPU (cores)"),
        ("server_cpu", "server CPU (cores)"),
        ("stable", "stable"),
    ]
    present = [(k, label) for k, label in cols if any(k in r for r in result.latency)]
    lines = [
        "| " + " | ".join(label for _, label in present) + " |",
        "|" + "---|" * len(present),
    ]
    for r in result.latency:
        cells = []
        for k, _ in present:
            v = r.get(k, "")
            cells.append(f"{v:.2f}" if isinstance(v, float) else "-" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(result: CompareResult, path: Path, plots: Sequence[str]) -> None:
    s = result.settings
    parts = ["# stainbench compare", ""]
    if not result.complete:
        parts += [
            f"> **INCOMPLETE**: {result.incomplete_reason}. The numbers below cover only "
            "what was measured before the run stopped.",
            "",
        ]
    mi = machine_info()
    parts += [
        f"- date: {result.started} (finished {result.finished or 'n/a'})",
        f"- val set: `{result.valset.get('source')}` ({result.valset.get('n_tiles')} tiles, "
        f"{', '.join(result.valset.get('tile_sizes', []))})",
        f"- server: {s.get('url') or 'n/a'} ({s.get('protocol')})",
        f"- machine: {mi.get('cpu')}, {mi.get('usable_cores')} cores, "
        f"load {mi.get('load_average')}",
        f"- command: `{s.get('command', '')}`",
        "",
        "## Summary",
        "",
        markdown_table(result),
        "",
    ]
    q = result.quality
    if q is not None:
        st = q.settings
        parts += [
            f"Quality: mean over tiles with {q.confidence:.0%} percentile-bootstrap intervals "
            f"({q.n_boot} resamples, seed {q.seed}). SSIM: Gaussian window sigma "
            f"{st.ssim_sigma} ({st.ssim_window}x{st.ssim_window}), data range {st.data_range:g}, "
            f"population covariance. Histogram KL: {st.kl_direction}, {st.kl_bins} bins, "
            f"pseudo-count {st.kl_pseudo_count:g}. Stain: {st.stain} channel of colour "
            f"deconvolution (rgb2hed), positive mask OD > {st.stain_threshold:g}. "
            + (
                f"Δ: relative difference of the mean to `{q.baseline}` with a paired bootstrap "
                "interval; (ns) = the interval includes 0."
                if q.baseline
                else ""
            ),
            "",
            "Bold: best value of each column. Formulas and how to read them: docs/COMPARE.md.",
            "",
        ]
    if result.latency:
        parts += ["## Latency", "", _latency_markdown(result), ""]
    if result.parity:
        parts += ["## Served vs local parity", ""]
        for m, p in result.parity.items():
            ok = p.get("ok")
            detail = str(p.get("detail", ""))
            state = "not checked" if ok is None else "ok" if ok else "**MISMATCH**"
            if detail.startswith(f"{state}:"):  # the detail may already say it
                parts.append(f"- `{m}`: {detail}")
            else:
                parts.append(f"- `{m}`: {state}: {detail}")
        parts.append("")
    if result.warnings:
        parts += ["## Warnings", ""] + [f"- {w}" for w in result.warnings] + [""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    _write_atomic(path, "\n".join(parts))


# -------------------------------------------------------------------------------- plots
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated for (lower x, higher y), sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def plot_quality_vs_latency(result: CompareResult, path: Path, metric: str = "ssim") -> bool:
    q = result.quality
    if q is None or not result.latency:
        return False
    names, pts, errs = [], [], []
    for m in q.models:
        row = result.latency_at(m, 1) or _lowest_concurrency(result, m)
        iv = q.summary[m].mean.get(metric)
        if row is None or iv is None or iv.n == 0:
            continue
        names.append(m)
        pts.append((_num(row.get("p50_ms")), iv.value))
        errs.append((iv.value - iv.low, iv.high - iv.value))
    if not pts:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    ax.errorbar(xs, ys, yerr=np.array(errs).T, fmt="o", capsize=3, color="tab:blue")
    for n, x, y in zip(names, xs, ys, strict=True):
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front = pareto_front(pts)
    ax.plot(
        [xs[i] for i in front],
        [ys[i] for i in front],
        "--o",
        color="tab:orange",
        markerfacecolor="none",
        markersize=12,
        drawstyle="steps-post",
        label="Pareto front (no model faster and better)",
    )
    lows = [y - e[0] for y, e in zip(ys, errs, strict=True)]
    highs = [y + e[1] for y, e in zip(ys, errs, strict=True)]
    if q.summary.get(IDENTITY) is not None:
        ident = q.summary[IDENTITY].mean[metric].value
        ax.axhline(ident, color="grey", lw=1.0, ls=":", label=f"identity (no model): {ident:.3g}")
        lows.append(ident)
        highs.append(ident)
    lo, hi = min(lows), max(highs)
    pad = 0.08 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
    ax.set_ylim(lo - pad, hi + pad)
    return _finish_plot(
        fig,
        ax,
        path,
        "p50 latency per tile, concurrency 1 (ms)",
        f"mean {METRIC_LABELS[metric]} (95% CI)",
        "Quality vs latency (up and left is better)",
    )


def _finish_plot(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> bool:
    """Label, grid and legend one line plot, save it to ``path`` and free the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)
    return True


def plot_latency_cdf(result: CompareResult, path: Path) -> bool:
    if not result.latency_samples:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    drawn = False
    for model, by_c in result.latency_samples.items():
        if not by_c:
            continue
        c = 1 if 1 in by_c else min(by_c)
        x = np.sort(np.asarray(by_c[c], dtype=np.float64))
        if x.size == 0:
            continue
        ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", label=f"{model} (c={c})")
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    for pct in (0.5, 0.95, 0.99):
        ax.axhline(pct, color="grey", lw=0.6, ls=":")
    return _finish_plot(
        fig, ax, path, "request latency (ms)", "fraction of requests", "Latency CDF per model"
    )


def plot_throughput(result: CompareResult, path: Path) -> bool:
    if not result.latency:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    models = list(dict.fromkeys(r["model"] for r in result.latency))
    for m in models:
        rows = sorted(
            (r for r in result.latency if r["model"] == m), key=lambda r: int(r["concurrency"])
        )
        ax.plot(
            [int(r["concurrency"]) for r in rows],
            [_num(r["throughput"]) for r in rows],
            "o-",
            label=m,
        )
    ax.set_xscale("log", base=2)
    cs = sorted({int(r["concurrency"]) for r in result.latency})
    ax.set_xticks(cs)
    ax.set_xticklabels([str(c) for c in cs])
    ax.set_ylim(bottom=0)
    return _finish_plot(
        fig, ax, path, "concurrent requests", "throughput (tiles/s)", "Throughput vs concurrency"
    )


def plot_examples(result: CompareResult, path: Path) -> bool:
    ex = result.examples
    if ex is None or len(ex.names) == 0:
        return False
    plt = _plt()
    cols = [("input", ex.inputs), ("target", ex.targets), *ex.outputs.items()]
    n = len(ex.names)
    fig, axes = plt.subplots(
        n, len(cols), figsize=(1.9 * len(cols), 1.9 * n + 0.3), dpi=110, squeeze=False
    )
    for r in range(n):
        for c, (title, arr) in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(arr[r])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(ex.names[r], fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


@dataclass
class ReportFiles:
    """Paths :func:`write_report` wrote."""

    results_json: Path
    per_tile_csv: Path
    report_md: Path
    plots: list[Path]


#: The plots a report may hold, in report order, and the functions drawing them.
PLOTS: dict[str, Any] = {
    "quality_vs_latency.png": plot_quality_vs_latency,
    "latency_cdf.png": plot_latency_cdf,
    "throughput.png": plot_throughput,
    "examples.png": plot_examples,
}
#: Every file a report may consist of (``write_report`` replaces all of them together).
REPORT_FILES: tuple[str, ...] = ("results.json", "per_tile.csv", "report.md", *PLOTS)


def write_report(result: CompareResult, out: str | Path) -> ReportFiles:
    """Write every output of ``result`` into ``out`` (created); returns the paths.

    The folder then holds this report only: files of an earlier report that this one does
    not have (e.g. a plot without data this time) are removed. Other files are left alone.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if result.finished is None:
        result.finished = datetime.now(timezone.utc).isoformat()
    plots: list[Path] = []
    for name, fn in PLOTS.items():
        try:
            if fn(result, out / name):
                plots.append(out / name)
        except Exception as exc:  # a plot must never lose the measurements
            result.warnings.append(f"plot {name} failed: {type(exc).__name__}: {exc}")
    files = ReportFiles(out / "results.json", out / "per_tile.csv", out / "report.md", plots)
    write_per_tile_csv(result, files.per_tile_csv)
    write_markdown(result, files.report_md, [p.name for p in plots])
    write_json(result, files.results_json)
    written = {p.name for p in (files.results_json, files.per_tile_csv, files.report_md, *plots)}
    for name in REPORT_FILES:
        if name not in written:
            (out / name).unlink(missing_ok=True)
    return files
