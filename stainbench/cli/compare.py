"""``stainbench compare``: quality and latency of every served model on a validation set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from stainbench.log import err_console, out_console

#: Exit code when the report was written but a served model failed the parity check.
EXIT_PARITY_MISMATCH = 3

HELP = (
    "Compare served models on a validation set: quality (SSIM, PSNR, MAE, colour-histogram "
    "KL, stain-channel Pearson and Dice, with bootstrap 95% intervals and the relative "
    "difference to --baseline) and latency (p50/p90/p95/p99, throughput per concurrency, "
    "Triton's server-side split), plus a served-vs-local parity check.\n\n"
    "--val-set is a store from 'stainbench data' (its val split) or a folder with A/ (inputs) and "
    "B/ (targets) tiles matched by file name. Without --url the embedded Triton server is "
    "started on --repo and stopped afterwards. Writes OUT/results.json, OUT/per_tile.csv, "
    "OUT/report.md and PNG plots, replacing every file of an earlier report there. On an "
    "error or Ctrl-C after a model was measured, what was measured is written, marked "
    "incomplete; an error before that (e.g. server down) writes nothing and leaves OUT as it "
    "was. Exit code: 0 done, 1 error, 2 usage, "
    f"{EXIT_PARITY_MISMATCH} report written but a model's served output differs from "
    "in-process ONNX Runtime (parity MISMATCH), 130 Ctrl-C. "
    "Formulas and how to read the report: docs/COMPARE.md."
)


def _int_list(text: str, option: str) -> list[int]:
    text = text.strip()
    if text in ("", "none", "0"):
        return []
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{option} takes integers separated by commas, got {text!r}"
        ) from None
    if any(v < 1 for v in values):
        raise typer.BadParameter(f"{option} values must be >= 1, got {text!r}")
    return sorted(set(values))


def compare(
    ctx: typer.Context,
    val_set: Annotated[
        Path,
        typer.Option(
            "--val-set",
            help="A store from 'stainbench data' (val split) or a folder with A/ and B/ tiles.",
        ),
    ],
    url: Annotated[
        str | None,
        typer.Option(
            help="A running Triton server, grpc://HOST:PORT or http://HOST:PORT "
            "(default: start the embedded server on --repo)."
        ),
    ] = None,
    repo: Annotated[
        Path | None,
        typer.Option(
            help="Model repository to serve (default model_repository when --url is not "
            "given). With --url it is only read for the parity check's model.onnx."
        ),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(help="Comma-separated model names (default: every READY model)."),
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option(
            help="grpc or http, for quality and latency requests (default: the --url's "
            "scheme, else grpc)."
        ),
    ] = None,
    concurrency: Annotated[
        str,
        typer.Option(help="Concurrent requests for the latency sweep, e.g. 1,2,4,8; 0 skips it."),
    ] = "1,2,4,8",
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Model the others are compared with (relative difference with a paired "
            "bootstrap interval), e.g. the supervised UNet, or 'identity'."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder for the report.")] = Path("compare_out"),
    max_tiles: Annotated[
        int | None, typer.Option(min=1, help="Use only the first N val tiles (default: all).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Tiles per quality request (capped by max_batch_size).")
    ] = 1,
    stain: Annotated[
        str,
        typer.Option(help="Stain for the stain-aware score: dab (IHC targets) or eosin (H&E)."),
    ] = "dab",
    stain_threshold: Annotated[
        float | None,
        typer.Option(help="Optical-density threshold of the positive mask (default per stain)."),
    ] = None,
    n_boot: Annotated[int, typer.Option(min=100, help="Bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    parity_tiles: Annotated[
        int,
        typer.Option(
            min=0,
            help="Tiles for the served-vs-local parity check (0 skips it); a mismatch "
            f"exits {EXIT_PARITY_MISMATCH}.",
        ),
    ] = 4,
    window: Annotated[
        float | None,
        typer.Option(min=0.1, help="Latency measurement window in seconds (engine default)."),
    ] = None,
    max_windows: Annotated[
        int | None,
        typer.Option(min=3, help="Most latency windows per point before it is reported unstable."),
    ] = None,
    server_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for the server and for each request.")
    ] = 180.0,
) -> None:
    from stainbench.bench.compare import CompareOptions, run_compare
    from stainbench.bench.report import render_table

    if stain not in ("dab", "eosin", "hematoxylin"):
        raise typer.BadParameter(f"--stain must be dab, eosin or hematoxylin, got {stain!r}")
    if protocol is None:
        protocol = "http" if url is not None and url.strip().lower().startswith("http:") else "grpc"
    if protocol not in ("grpc", "http"):
        raise typer.BadParameter(f"--protocol must be grpc or http, got {protocol!r}")
    model_list = [m.strip() for m in models.split(",") if m.strip()] if models else None
    latency: dict[str, Any] = {}
    if window is not None:
        latency["window_s"] = window
    if max_windows is not None:
        latency["max_windows"] = max_windows
    options = CompareOptions(
        val_set=val_set,
        url=url,
        repo=repo if repo is not None or url is not None else Path("model_repository"),
        models=model_list,
        protocol=protocol,  # type: ignore[arg-type]
        concurrency=_int_list(concurrency, "--concurrency"),
        baseline=baseline,
        out=out,
        max_tiles=max_tiles,
        batch_size=batch_size,
        stain=stain,  # type: ignore[arg-type]
        stain_threshold=stain_threshold,
        n_boot=n_boot,
        seed=seed,
        parity_tiles=parity_tiles,
        server_timeout=server_timeout,
        latency=latency,
        command=_command_line(ctx),
    )
    progress, finish = _progress()
    try:
        result = run_compare(options, progress=progress)
    except KeyboardInterrupt as exc:
        finish()
        report = getattr(exc, "report", None)
        where = (
            f"partial results in {report}"
            if report is not None
            else f"nothing was measured, {out} is as it was"
        )
        err_console.print(f"[red]error:[/] interrupted; {escape(where)}", highlight=False)
        raise typer.Exit(130) from None
    finally:
        finish()
    render_table(result, out_console)
    out_console.print(f"report: {out / 'report.md'} · {out / 'results.json'}", highlight=False)
    mismatches = result.parity_mismatches()
    for line in mismatches:  # on stderr: why the exit code is 3
        err_console.print(
            f"[bold red]parity MISMATCH:[/] served output differs from in-process ONNX "
            f"Runtime: {line}",
            highlight=False,
            soft_wrap=True,
        )
    if mismatches:
        raise typer.Exit(EXIT_PARITY_MISMATCH)


def _command_line(ctx: typer.Context) -> str:
    """The command as parsed (every option that was given a value), for the report."""
    parts = ["stainbench compare"]
    for name, value in ctx.params.items():
        if value is not None:
            parts.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(parts)


def _progress() -> tuple[Any, Any]:
    """A rich progress display fed by run_compare's callback; returns (callback, stop)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bars = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    tasks: dict[str, Any] = {}
    started = False

    def update(phase: str, done: int, total: int) -> None:
        nonlocal started
        if not started:
            bars.start()
            started = True
        if phase not in tasks:
            tasks[phase] = bars.add_task(phase, total=total)
        bars.update(tasks[phase], completed=done, total=total)

    def stop() -> None:
        if started:
            bars.stop()

    return update, stop


def register(app: typer.Typer) -> None:
    app.command("compare", help=HELP, no_args_is_help=True)(compare)
