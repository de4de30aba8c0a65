"""``stainbench loadtest`` as a library call: :func:`run_loadtest`.

Order of work: check every option, resolve the tiles (reading a zarr store here, writing a
``.npy`` for Locust), start the embedded Triton server unless a URL is given, check that the
server answers and serves every model of the mix with tiles of this size (one real request
each), then run Locust headless in separate processes (one, or a master and ``workers``
worker processes on 127.0.0.1), and parse its CSV files. Nothing is sent to the server before
all checks pass; every failure is one line (:class:`~stainbench.errors.StainbenchError`),
and a run refused by a check leaves the previous run's files in ``--out`` untouched: they are
removed, all together, only right before Locust starts.

Locust is never imported in this process: its gevent monkey patching breaks zarr.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stainbench.errors import BenchmarkError, ConfigError, ServingError
from stainbench.loadtest.options import ModelMix
from stainbench.loadtest.stats import LoadSummary, read_summary, slo_violations
from stainbench.loadtest.tiles import TileSet, prepare_tiles

Protocol = Literal["http", "grpc"]
USER_CLASSES: dict[str, str] = {"http": "TritonHttpUser", "grpc": "TritonGrpcUser"}
#: Seconds Locust gets to start (and its workers to connect) and to stop, beyond --run-time.
START_SLACK_S = 60.0
STOP_TIMEOUT_S = 5.0
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_run_time(text: str) -> int:
    """Seconds from Locust-style ``"90"``, ``"20s"``, ``"2m"``, ``"1h30m"`` (must be > 0)."""
    value = str(text).strip().lower()
    if value.isdigit():
        seconds = int(value)
    else:
        m = _DURATION.match(value)
        if not value or m is None:
            raise ConfigError(f"--run-time {text!r} is not a duration like 20s, 2m or 1h30m")
        h, mi, s = (int(g or 0) for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    if seconds <= 0:
        raise ConfigError(f"--run-time must be > 0, got {text!r}")
    return seconds


def default_locustfile() -> Path:
    """``loadtests/locustfile.py`` of the source tree this package was imported from."""
    return Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"


@dataclass
class LoadTestSpec:
    """What to run. Times in seconds (``run_time`` as text, Locust style), SLOs optional.

    ``url``: a running server (``http://H:P`` or ``grpc://H:P``); without it the embedded
    server is started on ``repo``. ``models``: mix ``"a:3,b"``; ``None`` means every ready
    model. ``tiles``: zarr store or ``.npy`` (``None``: the demo store); from a store,
    ``split``/``domain`` and at most ``max_tiles`` tiles are used. ``users``: concurrent
    closed-loop users; ``spawn_rate``: users started per second (default: all in 1 s).
    ``protocol``: ``None`` takes it from the URL's scheme (``grpc://`` is gRPC, anything else
    HTTP) and is HTTP for the embedded server. ``workers``: 0 runs Locust in one process,
    K > 0 a master and K worker processes on 127.0.0.1.
    """

    url: str | None = None
    repo: Path | None = None
    models: str | None = None
    tiles: Path | None = None
    protocol: Protocol | None = None
    users: int = 4
    spawn_rate: float | None = None
    run_time: str = "60s"
    workers: int = 0
    max_p95_ms: float | None = None
    max_failure_rate: float | None = None
    out: Path = Path("out/loadtest")
    batch_size: int = 1
    request_timeout_s: float = 30.0
    split: str = "val"
    domain: str = "A"
    max_tiles: int = 64
    seed: int = 0
    locustfile: Path | None = None
    server_timeout_s: float = 180.0


@dataclass
class LoadTestResult:
    """What a run produced. ``files``: name -> path of every file Locust wrote (CSV, HTML)."""

    host: str
    protocol: Protocol
    mix: str
    tiles: TileSet
    users: int
    run_time_s: int
    workers: int
    summary: LoadSummary
    violations: list[str]
    files: dict[str, Path]
    locust_exit_code: int
    wall_s: float
    embedded_server: bool
    command: list[str] = field(default_factory=list)
    #: Locust's own warnings worth showing (e.g. the load generator's CPU was saturated).
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every objective given was met (always true without objectives)."""
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tiles"] = {k: str(v) for k, v in asdict(self.tiles).items()}
        d["files"] = {k: str(v) for k, v in self.files.items()}
        d["passed"] = self.passed
        return d


def validate_spec(spec: LoadTestSpec) -> int:
    """Raise :class:`ConfigError` (one line) for an invalid option; returns run time (s)."""
    if spec.url and spec.repo:
        raise ConfigError("give either --url (a running server) or --repo (embedded), not both")
    if spec.protocol is not None and spec.protocol not in USER_CLASSES:
        raise ConfigError(f"--protocol must be 'http' or 'grpc', got {spec.protocol!r}")
    if spec.users < 1:
        raise ConfigError(f"--users must be >= 1, got {spec.users}")
    if spec.spawn_rate is not None and not (spec.spawn_rate > 0 and math.isfinite(spec.spawn_rate)):
        raise ConfigError(f"--spawn-rate must be > 0 users/s, got {spec.spawn_rate}")
    if spec.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {spec.workers}")
    if spec.workers > spec.users:
        raise ConfigError(f"--workers {spec.workers} exceeds --users {spec.users}: idle workers")
    if spec.max_p95_ms is not None and not (spec.max_p95_ms > 0 and math.isfinite(spec.max_p95_ms)):
        raise ConfigError(f"--max-p95-ms must be a positive number of ms, got {spec.max_p95_ms}")
    if spec.max_failure_rate is not None and not (0.0 <= spec.max_failure_rate <= 1.0):
        raise ConfigError(
            f"--max-failure-rate is a fraction in [0, 1] (0.01 = 1%), got {spec.max_failure_rate}"
        )
    if spec.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {spec.batch_size}")
    if not spec.request_timeout_s > 0:
        raise ConfigError(f"--request-timeout must be > 0 s, got {spec.request_timeout_s}")
    if spec.models is not None:
        ModelMix.parse(spec.models)
    locustfile = spec.locustfile or default_locustfile()
    if not locustfile.is_file():
        raise ConfigError(f"locustfile {locustfile} not found; give --locustfile PATH")
    return parse_run_time(spec.run_time)


def resolve_protocol(spec: LoadTestSpec) -> Protocol:
    """The protocol asked for, else the URL's (``grpc://`` -> gRPC), else HTTP."""
    if spec.protocol is not None:
        return spec.protocol
    if spec.url and spec.url.strip().lower().startswith("grpc://"):
        return "grpc"
    return "http"


# ----------------------------------------------------------------------------- the server
@contextlib.contextmanager
def _server(spec: LoadTestSpec) -> Iterator[tuple[str, bool]]:
    """Yield ``(url, embedded)``: the given URL, or that of a started embedded server."""
    if spec.url:
        yield spec.url, False
        return
    from stainbench.serving.server import TritonServer

    repo = Path(spec.repo or "model_repository")
    has_models = repo.is_dir() and any(
        p.is_dir() and not p.name.startswith(".") for p in repo.iterdir()
    )
    if not has_models:
        raise ServingError(
            f"model repository {repo} has no models: run 'make demo' or 'stainbench export', "
            "or give --url of a running server"
        )
    models = ModelMix.parse(spec.models).names if spec.models else None
    with TritonServer(repo, models=models, timeout=spec.server_timeout_s) as server:
        yield (server.grpc_url if spec.protocol == "grpc" else server.http_url), True


def _check_config(model: str, config: dict[str, Any], tiles: TileSet, batch: int) -> None:
    inputs = {i.get("name"): i for i in config.get("input", [])}
    if "INPUT" not in inputs:
        raise ServingError(
            f"model '{model}' has no input named INPUT (has {', '.join(map(str, inputs))}): "
            "it is not a stainbench served model"
        )
    dtype = inputs["INPUT"].get("data_type", "")
    if dtype != "TYPE_UINT8":
        raise ServingError(f"model '{model}' takes {dtype} INPUT, not uint8 tiles")
    max_batch = int(config.get("max_batch_size", 0))
    if max_batch and batch > max_batch:
        raise ConfigError(
            f"--batch-size {batch} exceeds model '{model}' max_batch_size {max_batch}"
        )
    dims = [int(d) for d in inputs["INPUT"].get("dims", [])]
    sizes = zip(dims[:2], (tiles.height, tiles.width), strict=False)
    if len(dims) == 3 and any(want not in (-1, got) for want, got in sizes):
        raise ConfigError(
            f"model '{model}' takes {dims[0]}x{dims[1]} tiles, the tile set has "
            f"{tiles.height}x{tiles.width}"
        )
    params = config.get("parameters", {}) or {}
    multiple_text = (params.get("stainbench.size_multiple") or {}).get("string_value", "1")
    multiple = int(multiple_text) if str(multiple_text).isdigit() else 1
    if multiple > 1 and (tiles.height % multiple or tiles.width % multiple):
        raise ConfigError(
            f"model '{model}' needs tile sides that are multiples of {multiple}, the tile set "
            f"has {tiles.height}x{tiles.width}: give other tiles with --tiles"
        )


def check_server(url: str, protocol: Protocol, mix: str | None, tiles: TileSet, batch: int) -> str:
    """Check the server and every model with one real request each; returns the mix text.

    Raises :class:`ServingError` for an unreachable server or an unknown / unready model, and
    :class:`ConfigError` when the tiles do not fit a model.
    """
    from stainbench.serving.client import TritonClient

    with TritonClient(url, protocol, timeout=30.0) as client:
        if not client.is_live():
            raise ServingError(
                f"cannot reach the Triton server at {client.url}; is it running? "
                "check --url, or leave it out to start the embedded server"
            )
        if mix is None:
            ready = [m.name for m in client.models() if m.state == "READY"]
            if not ready:
                raise ServingError(f"the server at {client.url} has no ready model")
            mix = ",".join(sorted(set(ready)))
        parsed = ModelMix.parse(mix)
        first = np.load(tiles.path, mmap_mode="r")[:batch]
        first = np.ascontiguousarray(np.resize(first, (batch, *first.shape[1:])))
        for model in parsed.names:
            client.require_ready(model)
            _check_config(model, client.config(model), tiles, batch)
            client.infer(model, first)
        return str(parsed)


# ------------------------------------------------------------------------------ Locust
def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    from stainbench.serving.runtime import free_ports

    return free_ports(1)[0]


def locust_commands(
    spec: LoadTestSpec, host: str, mix: str, tiles: TileSet, run_time_s: int, out: Path
) -> list[list[str]]:
    """The Locust command lines: ``[single]`` or ``[master, worker, ...]``."""
    locustfile = str(spec.locustfile or default_locustfile())
    base = [sys.executable, "-m", "locust", "-f", locustfile]
    custom = [
        "--models", mix,
        "--tiles", str(tiles.path),
        "--batch-size", str(spec.batch_size),
        "--request-timeout", str(spec.request_timeout_s),
        "--mix-seed", str(spec.seed),
        "--latency-dir", str(out / "latencies"),
    ]  # fmt: skip
    spawn_rate = spec.spawn_rate if spec.spawn_rate is not None else float(spec.users)
    run = [
        "--headless",
        "--users", str(spec.users),
        "--spawn-rate", f"{spawn_rate:g}",
        "--run-time", f"{run_time_s}s",
        "--stop-timeout", f"{STOP_TIMEOUT_S:g}",
        "--host", host,
        "--csv", str(out / "locust"),
        "--csv-full-history",
        "--html", str(out / "report.html"),
        "--only-summary",
    ]  # fmt: skip
    user_class = [USER_CLASSES[resolve_protocol(spec)]]
    if spec.workers == 0:
        return [base + run + custom + user_class]
    port = _free_port()
    master = base + run + custom + [
        "--master",
        "--master-bind-host", "127.0.0.1",
        "--master-bind-port", str(port),
        "--expect-workers", str(spec.workers),
        "--expect-workers-max-wait", f"{START_SLACK_S:g}",
    ] + user_class  # fmt: skip
    worker = base + custom + [
        "--worker", "--master-host", "127.0.0.1", "--master-port", str(port),
    ] + user_class  # fmt: skip
    return [master] + [list(worker) for _ in range(spec.workers)]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _log_tail(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or ["(empty log)"])[-1][:300]


def run_locust(
    commands: list[list[str]],
    out: Path,
    run_time_s: int,
    on_progress: Callable[[float, float], None] | None = None,
) -> int:
    """Run the Locust processes until the master (or single process) ends; its exit code.

    Logs go to ``out/locust.log`` (and ``out/locust_worker<i>.log``). A run that overstays
    ``run_time_s`` + start/stop slack is killed and raises :class:`BenchmarkError`.
    """
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    deadline_s = run_time_s + START_SLACK_S + STOP_TIMEOUT_S + 30
    try:
        for i, cmd in enumerate(commands):
            log_path = out / ("locust.log" if i == 0 else f"locust_worker{i}.log")
            logs.append(log_path)
            with log_path.open("wb") as log_file:
                procs.append(
                    subprocess.Popen(
                        cmd,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=env,
                        start_new_session=True,
                        preexec_fn=_die_with_parent,
                    )
                )
        t0 = time.monotonic()
        master = procs[0]
        while master.poll() is None:
            elapsed = time.monotonic() - t0
            if on_progress is not None:
                on_progress(min(elapsed, float(run_time_s)), float(run_time_s))
            if elapsed > deadline_s:
                raise BenchmarkError(
                    f"Locust did not finish within {deadline_s:.0f} s; killed it "
                    f"(log: {logs[0]}: {_log_tail(logs[0])})"
                )
            for i, worker in enumerate(procs[1:], start=1):
                if worker.poll() not in (None, 0, 1):
                    raise BenchmarkError(
                        f"Locust worker {i} died with code {worker.returncode} "
                        f"(log: {logs[i]}: {_log_tail(logs[i])})"
                    )
            time.sleep(0.25)
        for worker in procs[1:]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=10)
        if on_progress is not None:
            on_progress(float(run_time_s), float(run_time_s))
        return int(master.returncode)
    finally:
        for proc in procs:
            _stop(proc)


def locust_warnings(out: Path) -> list[str]:
    """Warnings from Locust's logs in ``out`` that make the numbers less trustworthy."""
    text = "\n".join(p.read_text(errors="replace") for p in sorted(out.glob("locust*.log")))
    found = []
    if "CPU usage" in text:
        found.append(
            "Locust's CPU went above 90% at some point: the load generator, not the server, "
            "may have limited throughput and inflated latency (add --workers, or machines)"
        )
    return found


#: What one run leaves in ``--out`` (besides ``tiles.npy``): removed together, right before
#: Locust starts, so the folder never mixes two runs.
RUN_FILES: tuple[str, ...] = (
    "locust_*.csv",
    "locust.log",
    "locust_worker*.log",
    "report.html",
    "summary.json",
    "latencies/latencies_*.csv",
)


class LoadTestInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_loadtest`. ``partial_stats``: this run's Locust statistics
    (written when Locust was stopped), or ``None`` when Locust had not started yet (the
    previous run's files in ``--out`` are then untouched)."""

    def __init__(self, partial_stats: Path | None) -> None:
        super().__init__()
        self.partial_stats = partial_stats


def remove_previous_run(out: Path, keep: Path | None = None) -> list[Path]:
    """Delete every file an earlier run left in ``out`` (:data:`RUN_FILES` and ``tiles.npy``,
    except ``keep``); an emptied ``latencies/`` folder goes too. Returns what was removed."""
    stale = [p for pattern in RUN_FILES for p in sorted(out.glob(pattern)) if p.is_file()]
    tiles = out / "tiles.npy"
    if tiles.is_file() and (keep is None or tiles.resolve() != keep.resolve()):
        stale.append(tiles)
    for path in stale:
        path.unlink()
    with contextlib.suppress(OSError):  # only when empty: never a user's own files
        (out / "latencies").rmdir()
    return stale


def _install_tiles(tiles: TileSet, staging: Path, out: Path) -> TileSet:
    """Move tiles read from a store (staged in ``staging``) to ``out/tiles.npy``."""
    if tiles.path.parent != staging.resolve():
        return tiles  # a .npy given with --tiles, used in place
    final = (out / "tiles.npy").resolve()
    os.replace(tiles.path, final)
    return dataclasses.replace(tiles, path=final)


def run_loadtest(
    spec: LoadTestSpec,
    on_progress: Callable[[float, float], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> LoadTestResult:
    """Run one load test as described in this module's docstring.

    ``on_progress(elapsed_s, total_s)`` is called a few times a second while Locust runs;
    ``on_stage(text)`` before each step. Writes into ``spec.out``: ``locust_stats.csv``,
    ``locust_stats_history.csv``, ``locust_failures.csv``, ``locust_exceptions.csv``,
    ``report.html``, ``locust.log``, ``latencies/``, ``tiles.npy`` (tiles read from a store)
    and ``summary.json``.

    The previous run's files in ``spec.out`` are kept until every check has passed (options,
    tiles, server, models); they are then all removed together (:func:`remove_previous_run`)
    right before Locust starts. A run refused before that leaves ``spec.out`` as it was.
    Ctrl-C raises :class:`LoadTestInterrupted`.
    """
    stage = on_stage or (lambda _text: None)
    run_time_s = validate_spec(spec)
    spec = dataclasses.replace(spec, protocol=resolve_protocol(spec))
    out = Path(spec.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    locust_started = False
    try:
        stage("reading tiles")
        tiles = prepare_tiles(
            spec.tiles, staging, split=spec.split, domain=spec.domain, max_tiles=spec.max_tiles
        )
        t0 = time.monotonic()
        stage("starting the Triton server" if not spec.url else "checking the server")
        with _server(spec) as (url, embedded):
            stage("checking models")
            from stainbench.serving.client import parse_url

            address, protocol = parse_url(url, spec.protocol)
            mix = check_server(url, protocol, spec.models, tiles, spec.batch_size)
            host = f"http://{address}" if protocol == "http" else address
            # Every check passed: from here on the folder holds this run only.
            remove_previous_run(out, keep=tiles.path)
            tiles = _install_tiles(tiles, staging, out)
            commands = locust_commands(spec, host, mix, tiles, run_time_s, out)
            stage(f"running Locust ({spec.users} users, {run_time_s} s)")
            locust_started = True
            code = run_locust(commands, out, run_time_s, on_progress)
        if code not in (0, 1):
            raise BenchmarkError(
                f"Locust exited with code {code} (log: {out / 'locust.log'}: "
                f"{_log_tail(out / 'locust.log')})"
            )
        summary = read_summary(out / "locust", raw_dir=out / "latencies")
        violations = slo_violations(summary, spec.max_p95_ms, spec.max_failure_rate)
        files = {p.name: p for p in sorted(out.iterdir()) if p.name.startswith("locust")}
        if (out / "report.html").is_file():
            files["report.html"] = out / "report.html"
        if (out / "latencies").is_dir():
            files["latencies/"] = out / "latencies"
        result = LoadTestResult(
            host=host,
            protocol=protocol,
            mix=mix,
            tiles=tiles,
            users=spec.users,
            run_time_s=run_time_s,
            workers=spec.workers,
            summary=summary,
            violations=violations,
            files=files,
            locust_exit_code=code,
            wall_s=time.monotonic() - t0,
            embedded_server=embedded,
            command=commands[0],
            warnings=locust_warnings(out),
        )
        (out / "summary.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
        result.files["summary.json"] = out / "summary.json"
        return result
    except KeyboardInterrupt:
        partial = out / "locust_stats.csv"
        raise LoadTestInterrupted(
            partial if locust_started and partial.is_file() else None
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not locust_started:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when still empty
