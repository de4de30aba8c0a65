"""Entry point of the ``stainbench`` command.

Library errors (:class:`~stainbench.errors.StainbenchError`) and usage errors become one red
line on stderr and a non-zero exit code (1 for errors, 2 for usage). ``--debug`` (or
``STAINBENCH_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape

from stainbench import __version__
from stainbench.errors import StainbenchError
from stainbench.log import err_console, setup_logging

#: Stage modules in pipeline order. Each ``stainbench.cli.<module>`` defines
#: ``register(app: typer.Typer) -> None``; a stage whose module does not exist yet is absent
#: from ``--help`` rather than shown as a stub.
STAGES: tuple[str, ...] = ("data", "train", "export", "serve", "compare", "loadtest")
#: Exit code of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130

HELP = """Virtual stain transfer for histopathology: ingest tiles and volumes into zarr, train
UNet / Pix2Pix / CycleGAN, export them into a Triton model repository, serve them with the
real Triton server, and compare their quality and latency side by side.

The pipeline, one command per arrow:

  images ─data ingest─▶ STORE.zarr ─train─▶ runs/NAME/*.pt
  runs/NAME/*.pt ─export─▶ model_repository/ ─serve─▶ tritonserver
  tritonserver ◀─compare / loadtest─ validation tiles
"""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stainbench {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    """Create the Typer app with every stage that is installed."""
    app = typer.Typer(
        name="stainbench",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def _root(
        version: Annotated[
            bool,
            typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
        ] = False,
        verbose: Annotated[
            int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")
        ] = 0,
        debug: Annotated[
            bool,
            typer.Option("--debug", help="Show tracebacks (also: STAINBENCH_DEBUG=1)."),
        ] = False,
    ) -> None:
        setup_logging(verbose + (2 if debug else 0))

    for stage in STAGES:
        try:
            module = importlib.import_module(f"stainbench.cli.{stage}")
        except ModuleNotFoundError as exc:
            if exc.name == f"stainbench.cli.{stage}":
                continue
            raise
        module.register(app)
    _reflow_help(app)
    _report_interrupts(app)
    return app


def _interruptible(callback: Callable[..., Any]) -> Callable[..., Any]:
    """``callback`` with Ctrl-C turned into :class:`typer.Abort`, which :func:`main` reports
    as one line (typer itself would turn it into a silent exit code 130)."""

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except KeyboardInterrupt:
            raise typer.Abort() from None

    return wrapper


def _report_interrupts(app: typer.Typer) -> None:
    for cmd in app.registered_commands:
        if cmd.callback is not None:
            cmd.callback = _interruptible(cmd.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            _report_interrupts(group.typer_instance)


def reflow(text: str) -> str:
    """Join the wrapped lines of each paragraph of a help text, so that the terminal wraps
    them at its own width. Paragraphs with an indented line (diagrams, examples) stay as
    written."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    out = []
    for p in paragraphs:
        lines = p.splitlines()
        keep = any(line.startswith((" ", "\b")) for line in lines)
        out.append(p if keep else " ".join(line.strip() for line in lines))
    return "\n\n".join(out)


def _reflow_help(app: typer.Typer) -> None:
    """Typer keeps the line breaks of docstrings; reflow every command's help once."""
    for cmd in app.registered_commands:
        text = cmd.help or (inspect.getdoc(cmd.callback) if cmd.callback else None)
        if text:
            cmd.help = reflow(text)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            _reflow_help(group.typer_instance)


def _quiet_shutdown(process_exits: bool) -> None:
    """After Ctrl-C: keep the interpreter's exit quiet. zarr's I/O runs on an asyncio loop in
    a background thread; the tasks an interrupt leaves pending would each be logged
    ("Task was destroyed but it is pending!", with tracebacks) as the process exits. Only
    when the process is about to exit (the command line), not for in-process callers."""
    if process_exits:
        logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
        sys.unraisablehook = lambda _: None


def _name_arguments(command: Any) -> None:
    """Show positional arguments as ``RECIPE``, ``STORE``, ... in usage lines (typer would
    print ``{recipe}``), unless the command names them itself."""
    for param in getattr(command, "params", []):
        if param.param_type_name == "argument" and not param.metavar and param.name:
            param.metavar = param.name.upper()
    for sub in getattr(command, "commands", {}).values():
        _name_arguments(sub)


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("STAINBENCH_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (also used by tests)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    try:
        app = build_app()
    except KeyboardInterrupt:  # Ctrl-C while the stages are being imported
        err_console.print("[red]error:[/] interrupted")
        _quiet_shutdown(argv is None)
        return INTERRUPTED
    command = typer.main.get_command(app)
    _name_arguments(command)
    try:
        result = command.main(args=args, prog_name="stainbench", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err_console.print("[red]error:[/] interrupted")
        _quiet_shutdown(argv is None)
        return INTERRUPTED
    except typer.TyperException as exc:  # usage errors (exit code 2) and other CLI errors
        ctx = getattr(exc, "ctx", None)
        code = getattr(exc, "exit_code", 2)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None and code == 2 else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err_console.print(
            f"[red]error:[/] {escape(message)}{escape(hint)}", highlight=False, soft_wrap=True
        )
        return code
    except StainbenchError as exc:
        if debug:
            err_console.print_exception()
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err_console.print("[red]error:[/] interrupted")
        _quiet_shutdown(argv is None)
        return INTERRUPTED
    if result == INTERRUPTED:  # a command that reported its own interruption (compare, ...)
        _quiet_shutdown(argv is None)
    return result if isinstance(result, int) else 0


def run() -> None:  # pragma: no cover - thin wrapper for `python -m stainbench`
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
