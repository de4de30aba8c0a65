"""Locust users that send tiles to Triton-served models (imported only by the locustfile).

- :class:`TritonUser` (abstract): picks a model from the mix and the next tile batch, times the
  call with :func:`time.perf_counter`, and fires Locust's ``request`` event itself, successes
  and failures under the same name (the model name), so every model has one row in the stats.
- :class:`TritonHttpUser`: binary-tensor POSTs through Locust's ``FastHttpUser`` connection pool.
- :class:`TritonGrpcUser`: tritonclient's gRPC client, made gevent-cooperative.

Users are closed-loop (each sends its next request when the previous one is answered, no think
time): ``--users`` is the number of requests in flight. After a failure a user pauses
``failure_backoff_s`` so that a dead server does not turn the load generator into a busy loop.
"""

from __future__ import annotations

import csv
import itertools
import os
import random
import time
import weakref
from pathlib import Path
from typing import Any, ClassVar

import gevent
import gevent.monkey
from locust import FastHttpUser, User, constant, task

from stainbench.loadtest.client import GrpcInferClient, HttpInferClient, enable_grpc_gevent
from stainbench.loadtest.options import UserSettings, grpc_target
from stainbench.loadtest.payload import batches, grpc_payload, http_payload, load_tiles


class TritonUser(User):
    """Abstract user: model mix, tile rotation, timing and request events."""

    abstract = True
    wait_time = constant(0)
    #: ``request_type`` column of Locust's statistics.
    protocol: ClassVar[str] = ""
    #: Seconds to pause after a failed request.
    failure_backoff_s: ClassVar[float] = 0.1
    #: Payloads built once per process and protocol: {(tiles, batch size, protocol): [...]}.
    _payload_cache: ClassVar[dict[tuple[str, int, str], list[Any]]] = {}
    _user_ids: ClassVar[itertools.count] = itertools.count()

    def on_start(self) -> None:
        self.settings = UserSettings.from_options(self.environment.parsed_options)
        self.payloads = self._payloads()
        user_id = next(TritonUser._user_ids)
        self.rng = random.Random(self.settings.seed * 1_000_003 + user_id)
        self.cursor = self.rng.randrange(len(self.payloads))
        self.connect()

    def _payloads(self) -> list[Any]:
        key = (str(self.settings.tiles.resolve()), self.settings.batch_size, self.protocol)
        if key not in self._payload_cache:
            tiles = load_tiles(self.settings.tiles)
            self._payload_cache[key] = [
                self.build_payload(b) for b in batches(tiles, self.settings.batch_size)
            ]
        return self._payload_cache[key]

    def build_payload(self, batch: Any) -> Any:
        """The protocol's request for one uint8 (B, H, W, 3) batch."""
        raise NotImplementedError

    def connect(self) -> None:
        """Create this user's client (called once, in ``on_start``)."""
        raise NotImplementedError

    def send(self, model: str, payload: Any) -> int:
        """One inference; returns the response size in bytes, raises on failure."""
        raise NotImplementedError

    @task
    def infer(self) -> None:
        model = self.settings.mix.pick(self.rng)
        payload = self.payloads[self.cursor]
        self.cursor = (self.cursor + 1) % len(self.payloads)
        start_time = time.time()
        t0 = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            length = self.send(model, payload)
        except Exception as exc:  # every failure is counted, none stops the user
            exception = exc
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        self.environment.events.request.fire(
            request_type=self.protocol,
            name=model,
            response_time=elapsed_ms,
            response_length=length,
            response=None,
            context={},
            exception=exception,
            start_time=start_time,
            url=None,
        )
        if exception is not None and self.failure_backoff_s > 0:
            gevent.sleep(self.failure_backoff_s)


class TritonHttpUser(TritonUser, FastHttpUser):
    """KServe v2 binary-tensor POSTs to ``<host>/v2/models/<model>/infer``."""

    abstract = False
    protocol = "HTTP"
    concurrency = 1
    max_retries = 0

    def __init__(self, environment: Any) -> None:
        options = environment.parsed_options
        timeout = float(getattr(options, "request_timeout", 30.0) or 30.0)
        self.network_timeout = timeout
        self.connection_timeout = timeout
        super().__init__(environment)

    def build_payload(self, batch: Any) -> Any:
        return http_payload(batch)

    def connect(self) -> None:
        self.http = HttpInferClient(self.client.client.clientpool, self.host)

    def send(self, model: str, payload: Any) -> int:
        return self.http.infer(model, payload)


class TritonGrpcUser(TritonUser):
    """tritonclient gRPC calls to ``--host`` given as ``HOST:PORT`` or ``grpc://HOST:PORT``."""

    abstract = False
    protocol = "gRPC"
    _gevent_ready: ClassVar[bool] = False
    #: Open clients of this process, closed by :func:`close_grpc_clients` when Locust quits.
    _open_clients: ClassVar[weakref.WeakSet[GrpcInferClient]] = weakref.WeakSet()

    def build_payload(self, batch: Any) -> Any:
        return grpc_payload(batch)

    def connect(self) -> None:
        if not TritonGrpcUser._gevent_ready:
            enable_grpc_gevent()
            TritonGrpcUser._gevent_ready = True
        self.grpc = GrpcInferClient(grpc_target(self.host or ""), self.settings.timeout_s)
        TritonGrpcUser._open_clients.add(self.grpc)

    def send(self, model: str, payload: Any) -> int:
        return self.grpc.infer(model, payload)

    def on_stop(self) -> None:
        grpc = getattr(self, "grpc", None)
        if grpc is not None:
            grpc.close()
            self.grpc = None


def close_grpc_clients(**_kwargs: Any) -> None:
    """Close every gRPC client still open in this process (a ``quitting`` listener)."""
    for client in list(TritonGrpcUser._open_clients):
        client.close()
    TritonGrpcUser._open_clients.clear()


def exit_promptly(exit_code: int, grace_s: float = 5.0, **_kwargs: Any) -> None:
    """Make sure the process ends ``grace_s`` seconds after Locust's ``quit`` event.

    Locust fires ``quit`` after writing its report, then closes its CSV files and exits; with
    grpcio's gevent integration the interpreter can hang in that exit. A real (not monkey
    patched) daemon thread ends the process with Locust's exit code if it is still alive then.
    """
    start_thread = gevent.monkey.get_original("_thread", "start_new_thread")
    sleep = gevent.monkey.get_original("time", "sleep")

    def _watchdog() -> None:
        sleep(grace_s)
        os._exit(exit_code)

    start_thread(_watchdog, ())


class LatencyRecorder:
    """Keeps every request's latency (ms, unrounded) and writes them as CSV when asked.

    Locust's own percentiles are bucketed to about two significant digits; these raw samples
    let ``stainbench loadtest`` compute exact ones. One file per process:
    ``latencies_<pid>.csv`` with columns ``name, ms, ok``.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"latencies_{os.getpid()}.csv"
        self.rows: list[tuple[str, float, int]] = []

    def on_request(
        self, name: str, response_time: float, exception: Any = None, **_kwargs: Any
    ) -> None:
        self.rows.append((name, float(response_time), 0 if exception else 1))

    def write(self, **_kwargs: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(("name", "ms", "ok"))
            writer.writerows(self.rows)


def install_latency_recorder(environment: Any, **_kwargs: Any) -> None:
    """An ``init`` listener: record raw latencies when ``--latency-dir`` is given."""
    folder = str(getattr(environment.parsed_options, "latency_dir", "") or "")
    if not folder:
        return
    recorder = LatencyRecorder(Path(folder))
    environment.events.request.add_listener(recorder.on_request)
    environment.events.quitting.add_listener(recorder.write)


def let_csv_writer_finish(environment: Any, **_kwargs: Any) -> None:
    """A ``quitting`` listener: give Locust's CSV writer one more turn before it closes.

    Locust rewrites ``*_stats.csv`` once a second and closes the files at exit without a
    final write, so the file can miss the last second of requests. When ``quitting`` fires
    the users have stopped (and workers have sent their final report), so one more turn of
    the writer makes the CSV match the final statistics.
    """
    from locust.stats import CSV_STATS_INTERVAL_SEC

    options = environment.parsed_options
    if getattr(options, "csv_prefix", None) and not getattr(options, "worker", False):
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.25)
