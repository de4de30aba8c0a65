"""Start and stop the real ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel.

>>> with TritonServer("model_repository") as server:      # doctest: +SKIP
...     client = TritonClient(server.grpc_url)
...     out = client.infer("unet_demo", tiles)           # (B, H, W, 3) uint8

The server runs in its own process group with its output in a log file. ``start()`` returns
once the server and every model are ready, after checking that the process listening on the
ports is the one it started; ``stop()`` sends SIGTERM, then SIGKILL to the whole group after a
grace period, and leaves no process behind (python-backend stubs included).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import psutil

from stainbench.errors import ServingError
from stainbench.serving.runtime import (
    BindError,
    TritonInstall,
    check_host,
    find_triton,
    free_ports,
    has_gpu,
    port_in_use,
    prepare_backend_dir,
    server_environment,
)

log = logging.getLogger(__name__)

#: Bytes of the shared-memory region each python-backend instance starts with: 4 MiB holds a
#: batch of 8 uint8 256x256 tiles without growing.
PYTHON_SHM_BYTES = 4 * 1024 * 1024
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_LOADING = re.compile(r"\"loading: ([^:\"]+):(\d+)\"")
_LOADED = re.compile(r"successfully loaded '([^']+)'")
_FAILED_MODEL = re.compile(r"failed to load '([^']+)' version (\d+): (.*?)(?:\\n|\"?$)")
_FAILED_SERVICE = re.compile(r"failed to start (\w+) service: (.*?)\"?$")
_SERVER_ERROR = re.compile(r"error: creating server: (.*)$")
_STUB_CRASH = re.compile(
    r"terminate called after throwing an instance of '([^']+)'\n\s*what\(\):\s*(.*)"
)
_STUB_SHELL = re.compile(r"^bash: -c: line \d+: (.*)$", re.M)
#: Characters the python backend cannot have in a model's path: it starts each model's stub
#: through ``bash -c`` with the path unquoted, so these split or alter the command.
_UNSAFE_PATH_CHARS = frozenset(" \t\n\"'`$\\!;&|<>()*?[]{}#")
_ERROR_LINE = re.compile(r"^E\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] \"?(.*?)\"?$")


def repository_models(repo: Path) -> list[str]:
    """Model folders of a Triton repository: subfolders that are not hidden, sorted."""
    return sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))


def diagnose_log(text: str) -> str:
    """One line saying why a server failed to start, read from its log (empty if unknown).

    Recognises, in this order: a model that failed to load (its name and the first line of
    the reason), a service that failed to start (e.g. a port in use), ``error: creating
    server``, then the last error line.
    """
    lines = text.splitlines()
    for line in lines:
        m = _FAILED_MODEL.search(line)
        if m:
            return f"model '{m.group(1)}' (version {m.group(2)}) failed to load: {m.group(3)}"
    for line in lines:
        m = _FAILED_SERVICE.search(line)
        if m:
            return f"failed to start the {m.group(1)} service: {m.group(2).strip()}"
    for line in lines:
        m = _SERVER_ERROR.search(line)
        if m:
            return m.group(1).strip()
    errors = [m.group(1) for m in map(_ERROR_LINE.match, lines) if m]
    errors = [e for e in errors if "CudaDriverHelper" not in e]  # benign on CPU hosts
    if errors:
        return errors[-1].split("\\n")[0]
    tail = [line.strip() for line in lines if line.strip()]
    return tail[-1] if tail else ""


def stub_crash(text: str) -> str:
    """Why a python-backend stub died while the server ran, from its log ("" if none did).

    Recognises an uncaught C++ exception (``std::invalid_argument: stol``: a space in the
    model's path) and a ``bash -c`` error (the shell that starts the stub). Triton itself
    waits for such a stub until its own timeout, so a start that sees one fails at once.
    """
    m = _STUB_CRASH.search(text)
    if m:
        return f"{m.group(1)}: {m.group(2).strip()}"
    m = _STUB_SHELL.search(text)
    return f"bash: {m.group(1).strip()}" if m else ""


def path_problem(path: Path) -> str:
    """Why Triton's python backend cannot load models under ``path`` ("" when it can).

    Its stub is started with the model's path spliced unquoted into a ``bash -c`` command and
    the path is encoded as ASCII: a space makes the stub crash (``std::invalid_argument:
    stol``, after which the server waits for it), a non-ASCII letter fails the load.
    """
    text = str(path)
    bad = sorted({c for c in text if c in _UNSAFE_PATH_CHARS or not c.isascii()})
    if not bad:
        return ""
    shown = ", ".join("a space" if c == " " else repr(c) for c in bad)
    return f"{path} contains {shown}"


def models_still_loading(text: str) -> list[str]:
    """Models whose loading started in the log but never finished."""
    started = {m.group(1) for m in _LOADING.finditer(text)}
    done = {m.group(1) for m in _LOADED.finditer(text)}
    return sorted(started - done)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the server when the process (thread) that started it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _url_host(host: str) -> str:
    """Address to connect to for a bind address (wildcards connect over loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class TritonServer:
    """The real Triton server on a model repository, as a context manager.

    Args:
        repo: model repository folder (one subfolder per model with its ``config.pbtxt``).
        host: address to bind HTTP, gRPC and metrics to; loopback unless told otherwise.
        http_port, grpc_port, metrics_port: TCP ports; ``None`` picks a free one.
        models: load only these models (explicit model control); ``None`` loads all.
        timeout: seconds to wait for the server and every model to become ready.
        log_path: where the server's output goes; default a file in a private temporary
            folder that is removed by a clean :meth:`stop` (kept when the start fails).
        gpu: use the GPU flags; ``None`` detects an NVIDIA driver. Without a GPU the pinned
            memory pool and GPU metrics are switched off.
        grace: seconds between SIGTERM and SIGKILL when stopping.
        extra_args: further ``tritonserver`` options, appended last.

    The server dies with the process (thread) that started it (``PR_SET_PDEATHSIG``): start
    it from a thread that outlives its use.
    """

    def __init__(
        self,
        repo: str | os.PathLike[str],
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        *,
        models: Sequence[str] | None = None,
        timeout: float = 120.0,
        log_path: str | os.PathLike[str] | None = None,
        gpu: bool | None = None,
        grace: float = 10.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        # absolute and normalised, but symlinks kept: a link from a plain path to a folder
        # whose real path has spaces is how such a repository can still be served
        self.repo = Path(os.path.abspath(Path(repo).expanduser()))
        self.host = host
        self._requested_ports = (http_port, grpc_port, metrics_port)
        self.http_port, self.grpc_port, self.metrics_port = self._requested_ports
        self.models_requested = list(models) if models is not None else None
        self.timeout = float(timeout)
        self._user_log = Path(log_path).expanduser().resolve() if log_path else None
        self.gpu = has_gpu() if gpu is None else gpu
        self.grace = float(grace)
        self.extra_args = list(extra_args)
        self.ready_models: list[str] = []
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log_path: Path | None = None
        self._log_file = None

    # ----------------------------------------------------------------------------- public
    @property
    def http_url(self) -> str:
        """``http://HOST:PORT`` of the HTTP/REST endpoint (KServe v2 protocol)."""
        return f"http://{_url_host(self.host)}:{self._port('http')}"

    @property
    def grpc_url(self) -> str:
        """``grpc://HOST:PORT`` of the gRPC endpoint (``TritonClient`` strips the scheme)."""
        return f"grpc://{_url_host(self.host)}:{self._port('grpc')}"

    @property
    def metrics_url(self) -> str:
        """``http://HOST:PORT/metrics``: Prometheus metrics."""
        return f"http://{_url_host(self.host)}:{self._port('metrics')}/metrics"

    @property
    def log_path(self) -> Path:
        """The server's log file (stdout and stderr of the server and its python stubs)."""
        if self._log_path is None:
            raise ServingError("the Triton server has not been started yet")
        return self._log_path

    @property
    def pid(self) -> int | None:
        """Process id of ``tritonserver`` while it runs."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def read_log(self) -> str:
        """The server's log so far ("" before start)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    def command(self, install: TritonInstall, backend_dir: Path) -> list[str]:
        """The ``tritonserver`` command line for the current ports."""
        cmd = [
            str(install.binary),
            f"--model-repository={self.repo}",
            f"--backend-directory={backend_dir}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--exit-timeout-secs={max(1, int(self.grace))}",
            "--log-verbose=0",
            f"--backend-config=python,shm-default-byte-size={PYTHON_SHM_BYTES}",
        ]
        if self.models_requested is not None:
            cmd.append("--model-control-mode=explicit")
            cmd += [f"--load-model={name}" for name in self.models_requested]
        if not self.gpu:
            cmd += ["--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false"]
        return cmd + self.extra_args

    def start(self) -> TritonServer:
        """Start the server and wait until it and every model are ready.

        Raises :class:`ServingError` (one line naming the failing model or port and the log
        file) when the repository is unusable, a port is taken, a model fails to load, or
        readiness takes longer than ``timeout``.
        """
        if self._proc is not None:
            raise ServingError("this TritonServer is already started")
        self._check_repository()
        install = find_triton()
        auto = [p is None for p in self._requested_ports]
        check_host(self.host)  # resolves and is this machine's, or one line saying why not
        for port, name in zip(
            self._requested_ports, ("--http-port", "--grpc-port", "--metrics-port"), strict=True
        ):
            try:
                taken = port is not None and port_in_use(self.host, port)
            except BindError as exc:
                raise ServingError(f"{exc}; choose another with {name}") from None
            if taken:
                raise ServingError(
                    f"port {port} on {self.host} is already in use (another server?); "
                    f"choose another with {name}"
                )
        attempts = 3 if any(auto) else 1
        for attempt in range(attempts):
            self._assign_ports()
            try:
                self._launch(install)
                self._wait_ready()
                self._check_ours()
                return self
            except ServingError as exc:
                self._terminate()
                retry = "already in use" in str(exc) and attempt + 1 < attempts
                if not retry:
                    self._cleanup(keep_log=True)
                    raise
                log.info("a picked port was taken meanwhile; retrying with other ports")
                self._cleanup(keep_log=False)
            except BaseException:  # Ctrl-C or a bug while starting: leave nothing running
                self._terminate()
                self._cleanup(keep_log=False)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, keep_log: bool = False) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``grace`` s) and every process it started.

        Idempotent. Removes the private temporary folder, with the log unless ``log_path``
        was given or ``keep_log`` is true (e.g. to point a user at it after a crash).
        """
        if self._proc is None:
            return
        self._terminate()
        self._cleanup(keep_log=keep_log)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"TritonServer(repo={str(self.repo)!r}, host={self.host!r}, {state})"

    # ---------------------------------------------------------------------------- private
    def _port(self, which: str) -> int:
        port = {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}[which]
        if port is None:
            raise ServingError("the Triton server has not been started yet (no port assigned)")
        return port

    def _check_repository(self) -> None:
        if not self.repo.exists():
            raise ServingError(
                f"model repository {self.repo} does not exist; create it with 'stainbench export'"
            )
        if not self.repo.is_dir():
            raise ServingError(f"model repository {self.repo} is not a folder")
        problem = path_problem(self.repo)
        if problem:
            raise ServingError(
                f"cannot serve the model repository {problem}: Triton's python backend cannot "
                "load models from a path with spaces, non-ASCII letters or shell characters; "
                "move the repository to a plain path (or symlink one to it, e.g. "
                f"ln -s {shlex.quote(str(self.repo))} /tmp/model_repository) and pass that "
                "to --repo"
            )
        found = repository_models(self.repo)
        if not found:
            raise ServingError(
                f"model repository {self.repo} holds no model folder; "
                "export a model into it with 'stainbench export'"
            )
        for name in self.models_requested or []:
            if not _MODEL_NAME.match(name) or name not in found:
                raise ServingError(
                    f"model '{name}' is not in {self.repo} (it holds: {', '.join(found)})"
                )

    def _assign_ports(self) -> None:
        picked = iter(free_ports(3, self.host))
        http, grpc, metrics = (p if p is not None else next(picked) for p in self._requested_ports)
        self.http_port, self.grpc_port, self.metrics_port = http, grpc, metrics

    def _launch(self, install: TritonInstall) -> None:
        problem = path_problem(Path(tempfile.gettempdir()))  # the stub is started from there
        if problem:
            raise ServingError(
                f"cannot start tritonserver: the temporary folder {problem}, which Triton's "
                "python backend cannot start its stub from; set TMPDIR to a plain folder "
                "(e.g. TMPDIR=/tmp)"
            )
        self._workdir = Path(tempfile.mkdtemp(prefix="stainbench-triton-"))
        backend_dir = prepare_backend_dir(install, self._workdir / "backends")
        self._log_path = self._user_log or self._workdir / "tritonserver.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self._log_path.open("wb")
        cmd = self.command(install, backend_dir)
        log.info("starting %s", " ".join(cmd))
        self._t0 = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=server_environment(install),
                cwd=self._workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise ServingError(f"cannot run {install.binary}: {exc}") from exc

    def _fail(self, what: str) -> ServingError:
        reason = diagnose_log(self.read_log())
        detail = f": {reason}" if reason else ""
        return ServingError(f"{what}{detail} (server log: {self._log_path})")

    def _http_get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        url = f"http://{_url_host(self.host)}:{self.http_port}{path}"
        request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=2.0) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, b""

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = self._t0 + self.timeout
        while True:
            if self._proc.poll() is not None:
                raise self._fail(
                    f"tritonserver exited with code {self._proc.returncode} before it was ready"
                )
            status, _ = self._http_get("/v2/health/ready")
            if status == 200:
                self.startup_seconds = time.monotonic() - self._t0
                return
            self._fail_fast(self.read_log())
            if time.monotonic() > deadline:
                loading = models_still_loading(self.read_log())
                what = f"; still loading: {', '.join(loading)}" if loading else ""
                raise ServingError(
                    f"tritonserver was not ready within {self.timeout:g} s{what} "
                    f"(raise --timeout; server log: {self._log_path})"
                )
            time.sleep(0.1)

    def _fail_fast(self, text: str) -> None:
        """Raise as soon as the log shows a start that cannot succeed, instead of waiting
        for the timeout: a model that failed to load (``--exit-on-error`` ends the server
        once the other models are loaded, however long they take) or a crashed stub (which
        Triton waits for)."""
        lines = text[: text.rfind("\n") + 1].splitlines()  # complete lines only
        if any(_FAILED_MODEL.search(line) for line in lines):
            raise self._fail("tritonserver cannot start")
        text = "\n".join(lines)
        crash = stub_crash(text)
        if crash:
            loading = models_still_loading(text)
            which = f" ({', '.join(loading)} never finished loading)" if loading else ""
            raise ServingError(
                f"a python-backend model process of tritonserver crashed while loading "
                f"({crash}){which} (server log: {self._log_path})"
            )

    def _check_ours(self) -> None:
        """The process we started must be the one listening on our ports; every model READY."""
        assert self._proc is not None
        ports = {self.http_port, self.grpc_port}
        try:
            proc = psutil.Process(self._proc.pid)
            # psutil >= 6 names it net_connections; 5.x only has connections
            connections = getattr(proc, "net_connections", None) or proc.connections
            listening = {
                c.laddr.port for c in connections(kind="tcp") if c.status == psutil.CONN_LISTEN
            }
        except psutil.Error as exc:
            raise self._fail(f"cannot inspect tritonserver (pid {self._proc.pid}): {exc}") from exc
        missing = ports - listening
        if missing:
            raise ServingError(
                f"port(s) {sorted(missing)} on {self.host} are already in use by another "
                f"server (not the tritonserver started here, pid {self._proc.pid}); "
                f"server log: {self._log_path}"
            )
        status, body = self._http_get("/v2/repository/index", method="POST")
        if status != 200:
            raise self._fail(f"cannot read the model index (HTTP {status})")
        index = json.loads(body or b"[]")
        not_ready = [m for m in index if m.get("state") != "READY" and "version" in m]
        if not_ready:
            m = not_ready[0]
            raise ServingError(
                f"model '{m.get('name')}' is {m.get('state')}: {m.get('reason', '')} "
                f"(server log: {self._log_path})"
            )
        self.ready_models = sorted({m["name"] for m in index if m.get("state") == "READY"})
        log.info("tritonserver ready in %.1f s: %s", self.startup_seconds or 0, self.ready_models)

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.grace + 2.0)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop within %.0f s; killing it", self.grace)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Python stubs notice the server's death and exit on their own; kill stragglers.
        _, alive = psutil.wait_procs(children, timeout=3.0)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(alive, timeout=3.0)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything else left in its process group

    def _cleanup(self, keep_log: bool) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._proc = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir / "backends", ignore_errors=True)
            log_inside = self._log_path is not None and self._workdir in self._log_path.parents
            if not (keep_log and log_inside):
                shutil.rmtree(self._workdir, ignore_errors=True)
                if log_inside:
                    self._log_path = None
            self._workdir = None
