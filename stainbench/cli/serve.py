"""``stainbench serve``: the real Triton server on a model repository, in the foreground."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stainbench.log import err_console, out_console

if TYPE_CHECKING:
    from stainbench.serving.server import TritonServer

HELP = (
    "Serve a model repository with the real Triton server (from the nvidia-pytriton wheel).\n\n"
    "Prepares the python backend for the running Python, binds HTTP, gRPC and metrics to "
    "HOST (loopback by default), waits until every model is ready, prints the URLs and runs "
    "until Ctrl-C or SIGTERM, then stops the server and its model processes. "
    "Port 0 picks a free port."
)


def _port(value: int) -> int | None:
    if not 0 <= value <= 65535:
        raise typer.BadParameter(f"{value} is not a TCP port (0-65535; 0 picks a free one)")
    return value or None


def _render(server: TritonServer) -> None:
    from rich.table import Table

    table = Table(title="Triton server ready", show_header=True, header_style="bold")
    table.add_column("endpoint")
    table.add_column("URL")
    table.add_row("HTTP", server.http_url)
    table.add_row("gRPC", server.grpc_url)
    table.add_row("metrics", server.metrics_url)
    out_console.print(table)
    models = Table(show_header=True, header_style="bold")
    models.add_column("model")
    models.add_column("state")
    for name in server.ready_models:
        models.add_row(name, "[green]READY[/]")
    out_console.print(models)
    out_console.print(
        f"repository {server.repo} · started in {server.startup_seconds or 0:.1f} s · "
        f"pid {server.pid} · log {server.log_path}",
        highlight=False,
        soft_wrap=True,
    )
    out_console.print("Press Ctrl-C to stop.")


def serve(
    repo: Annotated[
        Path,
        typer.Option("--repo", help="Model repository written by 'stainbench export'."),
    ] = Path("model_repository"),
    host: Annotated[
        str,
        typer.Option(help="Address to bind; 0.0.0.0 exposes the server to the network."),
    ] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP/REST port (0: a free one).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0: a free one).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port (0: free).")] = 8002,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", metavar="NAME", help="Load only this model (repeatable); default: all."
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(min=1, help="Seconds to wait for the server and every model to be ready."),
    ] = 120.0,
    log_file: Annotated[
        Path | None,
        typer.Option("--log", help="Write the server's log here (default: a temporary file)."),
    ] = None,
) -> None:
    from stainbench.serving.server import TritonServer

    server = TritonServer(
        repo,
        host=host,
        http_port=_port(http_port),
        grpc_port=_port(grpc_port),
        metrics_port=_port(metrics_port),
        models=model or None,
        timeout=timeout,
        log_path=log_file,
    )
    stop = threading.Event()
    serving = threading.Event()

    def _on_sigterm(signum: int, frame: object) -> None:
        stop.set()
        if not serving.is_set():  # still starting: abort the start like Ctrl-C does
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    died = False
    try:
        with err_console.status(f"starting tritonserver on {server.repo} ..."):
            server.start()
        serving.set()
        _render(server)
        try:
            while not stop.is_set() and server.is_running():
                stop.wait(0.2)
        except KeyboardInterrupt:
            stop.set()
        if not stop.is_set():
            died = True
            from stainbench.errors import ServingError
            from stainbench.serving.server import diagnose_log

            reason = diagnose_log(server.read_log())
            raise ServingError(
                f"tritonserver exited unexpectedly"
                f"{': ' + reason if reason else ''} (server log: {server.log_path})"
            )
        err_console.print("stopping tritonserver ...")
    finally:
        server.stop(keep_log=died)
        signal.signal(signal.SIGTERM, previous)
    err_console.print("tritonserver stopped.")


def register(app: typer.Typer) -> None:
    app.command("serve", help=HELP)(serve)
