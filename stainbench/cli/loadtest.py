"""``stainbench loadtest``: Locust against served models, with a summary and SLO gate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from stainbench.log import err_console, out_console

if TYPE_CHECKING:
    from stainbench.loadtest.runner import LoadTestResult

#: Exit code when the run worked but an objective (--max-p95-ms, --max-failure-rate) was missed.
EXIT_SLO_MISSED = 3

HELP = (
    "Load-test served models with Locust: real tiles, many concurrent users, a summary.\n\n"
    "Without --url the embedded Triton server is started on --repo. Every option, the "
    "server and each model are checked (one real request per model) before any load is "
    "sent. Locust runs headless in its own process(es) and writes DIR/locust_stats.csv, "
    "locust_stats_history.csv, locust_failures.csv, locust_exceptions.csv, report.html, "
    "locust.log and summary.json; a run refused by a check leaves the previous run's files "
    "in DIR untouched, and a run that starts replaces all of them. "
    "Exit code: 0 passed, 1 error, 2 usage, "
    f"{EXIT_SLO_MISSED} an objective was missed."
)


def _fmt(ms: float) -> str:
    return "-" if math.isnan(ms) else f"{ms:.0f}" if ms >= 10 else f"{ms:.1f}"


def render(result: LoadTestResult) -> None:
    """Print the per-model table, failures and the objectives' verdict."""
    from rich.table import Table

    title = (
        f"{result.protocol.upper()} load test · {result.host} · {result.users} users · "
        f"{result.run_time_s} s" + (f" · {result.workers} workers" if result.workers else "")
    )
    table = Table(title=title, caption="latency percentiles in ms", header_style="bold")
    width = max([5, *(len(row.name) for row in result.summary.endpoints)])
    table.add_column("model", min_width=width, no_wrap=True)
    for col in ("requests", "failed", "req/s", "p50", "p95", "p99", "max"):
        table.add_column(col, justify="right", no_wrap=True)
    for row in [*result.summary.endpoints, result.summary.aggregated]:
        name = "[bold]all[/]" if row.name == "Aggregated" else row.name
        fails = f"{row.failures} ({row.failure_rate:.0%})" if row.failures else "0"
        table.add_row(
            name,
            str(row.requests),
            f"[red]{fails}[/]" if row.failures else fails,
            f"{row.requests_per_s:.1f}",
            _fmt(row.percentile("50%")),
            _fmt(row.p95_ms),
            _fmt(row.percentile("99%")),
            _fmt(row.max_ms),
        )
    out_console.print(table)
    tiles = result.tiles
    out_console.print(
        f"tiles {tiles.count} x {tiles.height}x{tiles.width} from {tiles.source} · "
        f"mix {result.mix} · "
        + (
            "percentiles exact, from every request's latency"
            if result.summary.aggregated.raw_percentiles_ms
            else "percentiles are Locust's (about 2 significant digits)"
        ),
        highlight=False,
        soft_wrap=True,
    )
    for failure in result.summary.failures[:5]:
        out_console.print(
            f"[red]failure[/] {failure.name} x{failure.occurrences}: {failure.error}",
            highlight=False,
            soft_wrap=True,
        )
    for warning in result.warnings:
        out_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    folder = result.files["summary.json"].parent if "summary.json" in result.files else None
    out_console.print(f"files in {folder}: {', '.join(result.files)}", soft_wrap=True)
    if result.violations:
        for line in result.violations:
            out_console.print(f"[red]SLO missed:[/] {line}", highlight=False, soft_wrap=True)
    else:
        out_console.print("[green]passed[/]")


def loadtest(
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="A running server: http://HOST:PORT or grpc://HOST:PORT. "
            "Default: start the embedded server on --repo.",
        ),
    ] = None,
    repo: Annotated[
        Path | None,
        typer.Option(
            "--repo",
            help="Model repository for the embedded server (default: model_repository).",
        ),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            "--models",
            help="Models and weights of the mix, e.g. 'unet_demo:3,reinhard'. "
            "Default: every ready model, equally.",
        ),
    ] = None,
    tiles: Annotated[
        Path | None,
        typer.Option(
            "--tiles",
            help="Tiles to send: a stainbench zarr store (its --split/--domain tiles) or a "
            ".npy file of uint8 (N, H, W, 3). Default: the demo store "
            "demo_out/data/paired.zarr (from make demo).",
        ),
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option(
            "--protocol",
            help="http (binary tensors) or grpc. Default: from --url's scheme (grpc:// is "
            "gRPC), else http.",
        ),
    ] = None,
    users: Annotated[
        int, typer.Option("--users", "-u", help="Concurrent users (requests in flight).")
    ] = 4,
    spawn_rate: Annotated[
        float | None,
        typer.Option("--spawn-rate", "-r", help="Users started per second (default: --users)."),
    ] = None,
    run_time: Annotated[
        str, typer.Option("--run-time", "-t", help="Duration, e.g. 20s, 2m, 1h30m.")
    ] = "60s",
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="0: Locust in one process. K: Locust's distributed mode, a master and K "
            "worker processes on 127.0.0.1 (one core each).",
        ),
    ] = 0,
    max_p95_ms: Annotated[
        float | None,
        typer.Option("--max-p95-ms", help="Objective: p95 latency (ms), overall and per model."),
    ] = None,
    max_failure_rate: Annotated[
        float | None,
        typer.Option(
            "--max-failure-rate", help="Objective: failed fraction of requests (0.01 = 1%)."
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the CSV files, report and logs.")
    ] = Path("out/loadtest"),
    batch_size: Annotated[int, typer.Option("--batch-size", help="Tiles per request.")] = 1,
    split: Annotated[str, typer.Option("--split", help="Store split to read tiles from.")] = "val",
    domain: Annotated[
        str, typer.Option("--domain", help="Store domain (input stain) to read tiles from.")
    ] = "A",
    max_tiles: Annotated[
        int, typer.Option("--max-tiles", help="At most this many tiles from a store.")
    ] = 64,
    request_timeout: Annotated[
        float, typer.Option("--request-timeout", help="Per-request limit, seconds.")
    ] = 30.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the model and tile choice.")] = 0,
    locustfile: Annotated[
        Path | None,
        typer.Option("--locustfile", help="Locustfile (default: loadtests/locustfile.py)."),
    ] = None,
) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from stainbench.loadtest.runner import LoadTestSpec, run_loadtest

    spec = LoadTestSpec(
        url=url,
        repo=repo,
        models=models,
        tiles=tiles,
        protocol=protocol,  # type: ignore[arg-type]
        users=users,
        spawn_rate=spawn_rate,
        run_time=run_time,
        workers=workers,
        max_p95_ms=max_p95_ms,
        max_failure_rate=max_failure_rate,
        out=out,
        batch_size=batch_size,
        request_timeout_s=request_timeout,
        split=split,
        domain=domain,
        max_tiles=max_tiles,
        seed=seed,
        locustfile=locustfile,
    )
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        ) as progress:
            task = progress.add_task("preparing", total=None)

            def on_stage(text: str) -> None:
                progress.update(task, description=text)

            def on_progress(done: float, total: float) -> None:
                progress.update(task, completed=done, total=total)

            result = run_loadtest(spec, on_progress=on_progress, on_stage=on_stage)
    except KeyboardInterrupt as exc:
        # run_loadtest has stopped Locust (SIGTERM: it still writes its statistics) and the
        # embedded server; say where this run's partial results are, if Locust had started.
        partial = getattr(exc, "partial_stats", None)
        where = (
            f"; partial statistics in {partial}"
            if partial is not None
            else f"; nothing was run, {spec.out} is as it was"
        )
        err_console.print(
            f"[red]error:[/] interrupted{escape(where)}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(130) from None
    render(result)
    if not result.passed:
        raise typer.Exit(EXIT_SLO_MISSED)


def register(app: typer.Typer) -> None:
    app.command("loadtest", help=HELP)(loadtest)
