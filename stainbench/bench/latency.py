"""Latency and throughput of a served model, measured the way perf_analyzer does it.

Method (perf_analyzer's concurrency mode, re-implemented because its binary does not install
here; see ``docs/SERVING.md``):

- **Closed loop at fixed concurrency N**: N client threads, each with its own connection,
  each sending one request after another (``batch_size`` tiles per request, cycling through a
  pool of distinct tiles so no cache can help).
- **Warm-up excluded**: the first ``warmup_requests`` completed requests are discarded.
- **Measurement windows**: consecutive windows of ``window_s`` seconds (extended until at
  least ``min_window_requests`` requests completed); a request belongs to the window in which
  it *completed*. Per window: throughput and latency percentiles from the raw samples, the
  server's statistics differenced over the same window, the client's CPU use.
- **Stability**: a point is stable when the last ``stable_windows`` (3) windows agree within
  ``tolerance`` (10 %: max/min <= 1.10) on throughput *and* p95 latency; otherwise up to
  ``max_windows`` windows are measured and the point is reported as unstable.
- The reported numbers merge the last ``stable_windows`` windows (pooled samples).

Units: latencies in milliseconds (client side: from just before the request is sent to the
decoded response), throughput in requests/s and tiles/s, CPU use in cores (CPU seconds per
wall second: 1.0 is one fully busy core).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from stainbench.errors import BenchmarkError, ServingError
from stainbench.serving.client import ModelStatistics, Protocol, TritonClient

#: Percentiles reported for every point.
PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
#: Client CPU (in cores) above which the client may be the bottleneck (Model Analyzer: 80 %).
CLIENT_CPU_LIMIT = 0.8


# ------------------------------------------------------------------------------ pure parts
@dataclass(frozen=True)
class LatencySummary:
    """Statistics of a set of latency samples, milliseconds.

    Percentiles use linear interpolation between order statistics (numpy's default).
    """

    count: int
    mean: float
    std: float
    min: float
    max: float
    p50: float
    p90: float
    p95: float
    p99: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize_latencies(samples_ms: Sequence[float] | np.ndarray) -> LatencySummary:
    """Count, mean, std, min, max and p50/p90/p95/p99 of ``samples_ms`` (NaN when empty)."""
    x = np.asarray(samples_ms, dtype=np.float64).ravel()
    if x.size == 0:
        nan = math.nan
        return LatencySummary(0, nan, nan, nan, nan, nan, nan, nan, nan)
    p = np.percentile(x, PERCENTILES)
    return LatencySummary(
        count=int(x.size),
        mean=float(x.mean()),
        std=float(x.std()),
        min=float(x.min()),
        max=float(x.max()),
        p50=float(p[0]),
        p90=float(p[1]),
        p95=float(p[2]),
        p99=float(p[3]),
    )


@dataclass(frozen=True)
class ServerSplit:
    """Server-side time per request over a window, milliseconds (Triton statistics).

    ``queue``, ``compute_input``, ``compute_infer``, ``compute_output`` are cumulative times
    divided by the successful requests; ``overhead`` is the rest of the server's request
    time (``success`` minus the four parts); ``batch`` is the realised dynamic batch size in
    tiles per model execution.
    """

    requests: int
    queue: float
    compute_input: float
    compute_infer: float
    compute_output: float
    overhead: float
    total: float
    batch: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def server_split(delta: ModelStatistics) -> ServerSplit:
    """Per-request server times (ms) from a statistics difference ``after - before``."""
    n = delta.success_count
    if n <= 0:
        nan = math.nan
        return ServerSplit(0, nan, nan, nan, nan, nan, nan, nan)
    ms = 1e-6 / n
    parts = (delta.queue_ns, delta.compute_input_ns, delta.compute_infer_ns)
    parts = (*parts, delta.compute_output_ns)
    total = delta.success_ns * ms
    batch = delta.inference_count / delta.execution_count if delta.execution_count else math.nan
    return ServerSplit(
        requests=n,
        queue=parts[0] * ms,
        compute_input=parts[1] * ms,
        compute_infer=parts[2] * ms,
        compute_output=parts[3] * ms,
        overhead=max(0.0, total - sum(parts) * ms),
        total=total,
        batch=batch,
    )


@dataclass(frozen=True)
class Window:
    """One measurement window: what completed in it and what it cost."""

    duration_s: float
    requests: int
    throughput_rps: float  #: completed requests per second
    p95_ms: float
    mean_ms: float
    client_cpu: float  #: CPU seconds of this process per wall second (cores)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def is_stable(windows: Sequence[Window], count: int = 3, tolerance: float = 0.10) -> bool:
    """True when the last ``count`` windows agree: max/min <= 1 + ``tolerance`` for both
    throughput and p95 latency, and none of them is empty (perf_analyzer's rule)."""
    if count < 1 or len(windows) < count:
        return False
    last = windows[-count:]
    for values in ([w.throughput_rps for w in last], [w.p95_ms for w in last]):
        if any(not math.isfinite(v) or v <= 0 for v in values):
            return False
        if max(values) > (1.0 + tolerance) * min(values):
            return False
    return True


# -------------------------------------------------------------------------------- result
@dataclass
class LatencyPoint:
    """Latency and throughput of one model at one concurrency (see the module docstring)."""

    model: str
    url: str
    protocol: str
    concurrency: int
    batch_size: int
    tile_shape: tuple[int, int, int]
    stable: bool
    windows_measured: int
    duration_s: float  #: wall time of the merged windows
    requests: int
    tiles: int
    throughput_rps: float
    throughput_tiles_s: float
    latency_ms: LatencySummary
    server_ms: ServerSplit
    client_cpu: float  #: cores used by this (client) process during the merged windows
    server_cpu: float | None  #: cores used by the server and its stubs (None: not measured)
    cpu_count: int
    windows: list[Window] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    samples_ms: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    @property
    def client_bound(self) -> bool:
        """True when the client used more than :data:`CLIENT_CPU_LIMIT` of a core."""
        return self.client_cpu > CLIENT_CPU_LIMIT

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """JSON-ready dict; ``samples=True`` adds the raw latencies (ms) of the merged windows."""
        d: dict[str, Any] = {
            k: getattr(self, k)
            for k in (
                "model",
                "url",
                "protocol",
                "concurrency",
                "batch_size",
                "stable",
                "windows_measured",
                "duration_s",
                "requests",
                "tiles",
                "throughput_rps",
                "throughput_tiles_s",
                "client_cpu",
                "server_cpu",
                "cpu_count",
                "warnings",
            )
        }
        d["tile_shape"] = list(self.tile_shape)
        d["client_bound"] = self.client_bound
        d["latency_ms"] = self.latency_ms.to_dict()
        d["server_ms"] = self.server_ms.to_dict()
        d["windows"] = [w.to_dict() for w in self.windows]
        if samples:
            d["samples_ms"] = [round(float(v), 4) for v in self.samples_ms]
        return _finite(d)


def _finite(node: Any) -> Any:
    """NaN/inf -> None so that the dict is valid JSON."""
    if isinstance(node, dict):
        return {k: _finite(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_finite(v) for v in node]
    if isinstance(node, float) and not math.isfinite(node):
        return None
    return node


# ------------------------------------------------------------------------- measurement
@dataclass(frozen=True)
class LatencySettings:
    """How one point is measured (defaults follow perf_analyzer, with shorter windows)."""

    concurrency: int = 1
    batch_size: int = 1
    window_s: float = 2.0
    min_window_requests: int = 5
    warmup_requests: int | None = None  #: default: 2 per client thread, at least 4
    stable_windows: int = 3
    tolerance: float = 0.10
    max_windows: int = 10
    request_timeout_s: float = 60.0

    def check(self) -> None:
        problems = []
        if self.concurrency < 1:
            problems.append(f"concurrency must be >= 1, got {self.concurrency}")
        if self.batch_size < 1:
            problems.append(f"batch size must be >= 1, got {self.batch_size}")
        if self.window_s <= 0:
            problems.append(f"window must be > 0 s, got {self.window_s}")
        if not 1 <= self.stable_windows <= self.max_windows:
            problems.append(
                f"need 1 <= stable windows ({self.stable_windows}) <= max windows "
                f"({self.max_windows})"
            )
        if self.tolerance <= 0:
            problems.append(f"stability tolerance must be > 0, got {self.tolerance}")
        if problems:
            raise BenchmarkError("latency settings: " + "; ".join(problems))

    @property
    def warmup(self) -> int:
        if self.warmup_requests is not None:
            return max(0, self.warmup_requests)
        return max(4, 2 * self.concurrency)


class _Worker(threading.Thread):
    """One closed-loop client: sends a request, waits for the answer, sends the next."""

    def __init__(
        self,
        index: int,
        client: TritonClient,
        model: str,
        batches: list[Any],
        batch_size: int,
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"latency-client-{index}", daemon=True)
        self.client = client
        self.model = model
        self.batches = batches
        self.batch_size = batch_size
        self.stop = stop
        #: (start, end) perf_counter seconds of each completed request, in completion order
        self.records: list[tuple[float, float]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        i = 0
        try:
            while not self.stop.is_set():
                inputs = self.batches[i % len(self.batches)]
                t0 = time.perf_counter()
                self.client.infer_inputs(self.model, inputs, self.batch_size)
                self.records.append((t0, time.perf_counter()))
                i += 1
        except BaseException as exc:
            self.error = exc
            self.stop.set()


def _process_cpu(pids: Sequence[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _server_pids(server_pid: int | None) -> list[int]:
    if server_pid is None:
        return []
    import psutil

    try:
        proc = psutil.Process(server_pid)
        return [server_pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.Error:
        return []


def _batches(
    client: TritonClient, tiles: np.ndarray, batch_size: int, offset: int, count: int = 8
) -> list[Any]:
    n = tiles.shape[0]
    out = []
    for b in range(count):
        idx = [(offset + b * batch_size + j) % n for j in range(batch_size)]
        out.append(client.make_inputs(tiles[idx]))
    return out


def measure_latency(
    url: str,
    model: str,
    tiles: np.ndarray,
    settings: LatencySettings | None = None,
    *,
    protocol: Protocol | None = None,
    server_pid: int | None = None,
    on_window: Callable[[Window], None] | None = None,
) -> LatencyPoint:
    """Measure one point: ``model`` at ``url`` under ``settings.concurrency`` clients.

    Args:
        tiles: pool of uint8 RGB tiles ``(N, H, W, 3)``, all of one size; requests cycle
            through it (each thread starts at another offset).
        server_pid: the local ``tritonserver`` pid, to also report the server's CPU use.
        on_window: called after each measurement window (e.g. to advance a progress bar).

    Raises :class:`ServingError` when the server fails a request or cannot be reached, and
    :class:`BenchmarkError` for unusable settings or tiles.
    """
    settings = settings or LatencySettings()
    settings.check()
    if not isinstance(tiles, np.ndarray) or tiles.ndim != 4 or tiles.dtype != np.uint8:
        got = f"{getattr(tiles, 'dtype', type(tiles).__name__)} {getattr(tiles, 'shape', '')}"
        raise BenchmarkError(f"latency tiles must be uint8 (N, H, W, 3), got {got}")
    if tiles.shape[0] == 0 or tiles.shape[-1] != 3:
        raise BenchmarkError(f"latency tiles must be uint8 (N, H, W, 3), got {tiles.shape}")

    control = TritonClient(url, protocol, timeout=settings.request_timeout_s)
    stop = threading.Event()
    workers: list[_Worker] = []
    try:
        control.require_ready(model)
        for i in range(settings.concurrency):
            c = TritonClient(url, protocol, timeout=settings.request_timeout_s)
            batches = _batches(c, tiles, settings.batch_size, offset=i * 7)
            workers.append(_Worker(i, c, model, batches, settings.batch_size, stop))
        return _run(control, workers, model, tiles, settings, stop, server_pid, on_window)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=settings.request_timeout_s)
            w.client.close()
        control.close()


def _check_workers(workers: Sequence[_Worker]) -> None:
    for w in workers:
        if w.error is not None:
            if isinstance(w.error, ServingError):
                raise ServingError(str(w.error)) from None
            raise w.error


def _run(
    control: TritonClient,
    workers: list[_Worker],
    model: str,
    tiles: np.ndarray,
    s: LatencySettings,
    stop: threading.Event,
    server_pid: int | None,
    on_window: Callable[[Window], None] | None,
) -> LatencyPoint:
    for w in workers:
        w.start()
    # warm-up: wait until enough requests completed, then start counting from "now"
    deadline = time.perf_counter() + s.request_timeout_s + 30 * s.window_s
    while sum(len(w.records) for w in workers) < s.warmup:
        _check_workers(workers)
        if time.perf_counter() > deadline:
            raise BenchmarkError(f"warm-up of model '{model}' did not finish in time")
        time.sleep(0.005)
    _check_workers(workers)

    spids = _server_pids(server_pid)
    cursor = [len(w.records) for w in workers]
    t_start = time.perf_counter()
    stats_start = control.statistics(model)
    cpu_start = time.process_time()
    scpu_start = _process_cpu(spids)
    windows: list[Window] = []
    # per window: (start time, samples, stats snapshot, cpu, server cpu)
    marks: list[tuple[float, np.ndarray, ModelStatistics, float, float]] = []
    w_start = t_start
    while len(windows) < s.max_windows:
        w_samples: list[float] = []
        while True:
            time.sleep(min(0.05, s.window_s))
            _check_workers(workers)
            now = time.perf_counter()
            done = sum(len(w.records) - c for w, c in zip(workers, cursor, strict=True))
            if now - w_start >= s.window_s and done >= s.min_window_requests:
                break
            if now - w_start > s.window_s + s.request_timeout_s:
                raise BenchmarkError(
                    f"model '{model}' completed only {done} requests in "
                    f"{now - w_start:.0f} s; raise the window or the request timeout"
                )
        w_end = time.perf_counter()
        stats = control.statistics(model)
        cpu = time.process_time()
        scpu = _process_cpu(spids)
        for i, w in enumerate(workers):
            records = w.records
            j = cursor[i]
            while j < len(records) and records[j][1] < w_end:
                w_samples.append((records[j][1] - records[j][0]) * 1000.0)
                j += 1
            cursor[i] = j
        samples = np.asarray(w_samples)
        duration = w_end - w_start
        prev_cpu = marks[-1][3] if marks else cpu_start
        window = Window(
            duration_s=duration,
            requests=int(samples.size),
            throughput_rps=samples.size / duration,
            p95_ms=summarize_latencies(samples).p95,
            mean_ms=float(samples.mean()) if samples.size else math.nan,
            client_cpu=(cpu - prev_cpu) / duration,
        )
        windows.append(window)
        marks.append((w_start, samples, stats, cpu, scpu))
        if on_window is not None:
            on_window(window)
        w_start = w_end
        if is_stable(windows, s.stable_windows, s.tolerance):
            break
    stop.set()

    merged = marks[-s.stable_windows :]
    first = len(marks) - len(merged)
    t0 = merged[0][0]
    t1 = w_start
    before = marks[first - 1] if first > 0 else None
    stats0 = before[2] if before else stats_start
    cpu0 = before[3] if before else cpu_start
    scpu0 = before[4] if before else scpu_start
    samples = np.concatenate([m[1] for m in merged])
    duration = t1 - t0
    stable = is_stable(windows, s.stable_windows, s.tolerance)
    client_cpu = (merged[-1][3] - cpu0) / duration
    server_cpu = (merged[-1][4] - scpu0) / duration if spids else None
    warnings = []
    if not stable:
        warnings.append(
            f"not stable after {len(windows)} windows of {s.window_s:g} s (last "
            f"{s.stable_windows} disagree by more than {s.tolerance:.0%}); "
            "raise the window length"
        )
    if client_cpu > CLIENT_CPU_LIMIT:
        warnings.append(f"the client used {client_cpu:.0%} of a core: it may be the bottleneck")
    requests = int(samples.size)
    return LatencyPoint(
        model=model,
        url=control.url,
        protocol=control.protocol,
        concurrency=s.concurrency,
        batch_size=s.batch_size,
        tile_shape=tuple(int(v) for v in tiles.shape[1:]),  # type: ignore[arg-type]
        stable=stable,
        windows_measured=len(windows),
        duration_s=duration,
        requests=requests,
        tiles=requests * s.batch_size,
        throughput_rps=requests / duration,
        throughput_tiles_s=requests * s.batch_size / duration,
        latency_ms=summarize_latencies(samples),
        server_ms=server_split(merged[-1][2] - stats0),
        client_cpu=client_cpu,
        server_cpu=server_cpu,
        cpu_count=os.cpu_count() or 1,
        windows=windows,
        warnings=warnings,
        samples_ms=samples,
    )


def sweep_concurrency(
    url: str,
    model: str,
    tiles: np.ndarray,
    concurrencies: Sequence[int] = (1, 2, 4, 8),
    settings: LatencySettings | None = None,
    **kwargs: Any,
) -> list[LatencyPoint]:
    """:func:`measure_latency` at each concurrency (other settings shared), in order."""
    base = settings or LatencySettings()
    points = []
    for c in concurrencies:
        point_settings = LatencySettings(**{**asdict(base), "concurrency": int(c)})
        points.append(measure_latency(url, model, tiles, point_settings, **kwargs))
    return points


def points_table(points: Sequence[LatencyPoint]) -> list[Mapping[str, Any]]:
    """Flat rows (one per point) with perf_analyzer-like columns, times in ms."""
    rows = []
    for p in points:
        rows.append(
            {
                "model": p.model,
                "protocol": p.protocol,
                "concurrency": p.concurrency,
                "batch_size": p.batch_size,
                "tiles_per_s": p.throughput_tiles_s,
                "requests_per_s": p.throughput_rps,
                "p50_ms": p.latency_ms.p50,
                "p90_ms": p.latency_ms.p90,
                "p95_ms": p.latency_ms.p95,
                "p99_ms": p.latency_ms.p99,
                "mean_ms": p.latency_ms.mean,
                "server_queue_ms": p.server_ms.queue,
                "server_compute_input_ms": p.server_ms.compute_input,
                "server_compute_infer_ms": p.server_ms.compute_infer,
                "server_compute_output_ms": p.server_ms.compute_output,
                "server_batch": p.server_ms.batch,
                "client_cpu": p.client_cpu,
                "server_cpu": p.server_cpu,
                "stable": p.stable,
            }
        )
    return rows
