"""Read the statistics Locust writes with ``--csv PREFIX`` (no Locust import).

``PREFIX_stats.csv`` has one row per (request type, name), i.e. per model here, and an
``Aggregated`` row; ``PREFIX_failures.csv`` one row per distinct error;
``PREFIX_stats_history.csv`` cumulative counts over time. Times are milliseconds; Locust's
percentiles are bucketed to about two significant digits (integer ms below 100 ms), so the
users can also write raw latencies (``--latency-dir``) from which exact ones are computed.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from stainbench.errors import BenchmarkError

#: Percentile columns of Locust's stats CSV kept in the summary.
PERCENTILES = ("50%", "90%", "95%", "99%", "100%")


@dataclass(frozen=True)
class EndpointStats:
    """One row of ``locust_stats.csv``: one model (or ``Aggregated``), times in ms."""

    request_type: str
    name: str
    requests: int
    failures: int
    median_ms: float
    average_ms: float
    min_ms: float
    max_ms: float
    requests_per_s: float
    failures_per_s: float
    percentiles_ms: dict[str, float] = field(default_factory=dict)
    #: Exact percentiles from raw samples (same keys), when they were recorded.
    raw_percentiles_ms: dict[str, float] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float:
        """Failed / all requests (0 when none was sent)."""
        return self.failures / self.requests if self.requests else 0.0

    @property
    def p95_ms(self) -> float:
        """Exact p95 when raw samples exist, else Locust's bucketed one (ms)."""
        return self.percentile("95%")

    def percentile(self, key: str) -> float:
        """``key`` like ``"95%"``: exact from raw samples when recorded, else Locust's (ms)."""
        source = self.raw_percentiles_ms or self.percentiles_ms
        return source.get(key, math.nan)


@dataclass(frozen=True)
class FailureRow:
    """One row of ``locust_failures.csv``."""

    request_type: str
    name: str
    error: str
    occurrences: int


@dataclass(frozen=True)
class LoadSummary:
    """Everything parsed from one run's CSV files."""

    endpoints: list[EndpointStats]
    aggregated: EndpointStats
    failures: list[FailureRow]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(row: dict[str, str], key: str) -> float:
    value = (row.get(key) or "").strip()
    if value in ("", "N/A"):
        return math.nan
    return float(value)


def _endpoint(row: dict[str, str]) -> EndpointStats:
    return EndpointStats(
        request_type=row.get("Type", ""),
        name=row["Name"],
        requests=int(row["Request Count"]),
        failures=int(row["Failure Count"]),
        median_ms=_num(row, "Median Response Time"),
        average_ms=_num(row, "Average Response Time"),
        min_ms=_num(row, "Min Response Time"),
        max_ms=_num(row, "Max Response Time"),
        requests_per_s=_num(row, "Requests/s"),
        failures_per_s=_num(row, "Failures/s"),
        percentiles_ms={p: _num(row, p) for p in PERCENTILES},
    )


def read_raw_latencies(folder: str | Path) -> dict[str, np.ndarray]:
    """Raw latencies (ms, float64) per request name from ``folder/latencies_*.csv``, all
    requests (successes and failures) as Locust counts them; ``{}`` when none were written."""
    samples: dict[str, list[float]] = {}
    for path in sorted(Path(folder).glob("latencies_*.csv")):
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                samples.setdefault(row["name"], []).append(float(row["ms"]))
    return {name: np.asarray(values, dtype=np.float64) for name, values in samples.items()}


def _exact(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    qs = [float(p.rstrip("%")) for p in PERCENTILES]
    return dict(zip(PERCENTILES, map(float, np.percentile(values, qs)), strict=True))


def read_summary(prefix: str | Path, raw_dir: str | Path | None = None) -> LoadSummary:
    """Parse ``PREFIX_stats.csv`` and ``PREFIX_failures.csv``; with ``raw_dir``, add exact
    percentiles from the raw latency files in it (:func:`read_raw_latencies`).

    Raises :class:`BenchmarkError` when the stats file is missing or has no ``Aggregated``
    row (Locust did not get far enough to write it).
    """
    stats_path = Path(f"{prefix}_stats.csv")
    if not stats_path.is_file():
        raise BenchmarkError(f"Locust wrote no statistics ({stats_path} is missing)")
    with stats_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    try:
        endpoints = [_endpoint(r) for r in rows if r.get("Name") != "Aggregated"]
        aggregated = [_endpoint(r) for r in rows if r.get("Name") == "Aggregated"]
    except (KeyError, ValueError) as exc:
        raise BenchmarkError(f"{stats_path} is not a Locust stats file ({exc})") from None
    if not aggregated:
        raise BenchmarkError(f"{stats_path} has no 'Aggregated' row: the run did not finish")
    raw = read_raw_latencies(raw_dir) if raw_dir is not None else {}
    if raw:
        every = np.concatenate(list(raw.values()))
        endpoints = [
            replace(e, raw_percentiles_ms=_exact(raw.get(e.name, np.empty(0)))) for e in endpoints
        ]
        aggregated = [replace(aggregated[0], raw_percentiles_ms=_exact(every))]
    failures: list[FailureRow] = []
    failures_path = Path(f"{prefix}_failures.csv")
    if failures_path.is_file():
        with failures_path.open(newline="") as fh:
            failures = [
                FailureRow(r["Method"], r["Name"], r["Error"], int(r["Occurrences"]))
                for r in csv.DictReader(fh)
            ]
    return LoadSummary(endpoints=endpoints, aggregated=aggregated[0], failures=failures)


def read_history(prefix: str | Path, name: str = "Aggregated") -> list[dict[str, float]]:
    """Rows of ``PREFIX_stats_history.csv`` for ``name``: ``timestamp`` (s since epoch),
    ``user_count``, ``total_requests``, ``total_failures`` (cumulative counts)."""
    path = Path(f"{prefix}_stats_history.csv")
    if not path.is_file():
        raise BenchmarkError(f"Locust wrote no history ({path} is missing)")
    with path.open(newline="") as fh:
        return [
            {
                "timestamp": float(r["Timestamp"]),
                "user_count": float(r["User Count"]),
                "total_requests": float(r["Total Request Count"]),
                "total_failures": float(r["Total Failure Count"]),
            }
            for r in csv.DictReader(fh)
            if r["Name"] == name
        ]


def slo_violations(
    summary: LoadSummary, max_p95_ms: float | None, max_failure_rate: float | None
) -> list[str]:
    """One line per missed objective, checked on the ``Aggregated`` row and on every model.

    A run without any request misses every objective given (nothing was shown to hold).
    """
    out: list[str] = []
    rows = [summary.aggregated, *summary.endpoints]
    asked = max_p95_ms is not None or max_failure_rate is not None
    if summary.aggregated.requests == 0 and asked:
        return ["no request completed, so no objective could be met"]
    for row in rows:
        label = "all models" if row.name == "Aggregated" else f"model '{row.name}'"
        if max_p95_ms is not None and row.requests:
            p95 = row.p95_ms
            if math.isnan(p95) or p95 > max_p95_ms:
                out.append(f"{label}: p95 {p95:g} ms > {max_p95_ms:g} ms")
        if max_failure_rate is not None and row.failure_rate > max_failure_rate:
            out.append(
                f"{label}: failure rate {row.failure_rate:.2%} > {max_failure_rate:.2%} "
                f"({row.failures} of {row.requests})"
            )
    return out
