"""The CLI skeleton: help, version, one-line errors and exit codes, run as a real process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stainbench import __version__
from stainbench.cli.main import STAGES, build_app, main
from stainbench.errors import DataError


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stainbench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_version_prints_package_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"stainbench {__version__}"


def test_help_lists_every_installed_stage() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    app = build_app()
    import typer.main

    registered = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert registered <= set(STAGES)
    for name in registered:
        assert name in proc.stdout


@pytest.mark.parametrize("args", [["no-such-command"], ["--no-such-option"]])
def test_usage_errors_are_one_line_and_exit_2(args: list[str]) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
    assert "Traceback" not in proc.stderr


def test_library_error_becomes_one_line_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import typer

    def register(app: typer.Typer) -> None:
        @app.command("boom")
        def boom() -> None:
            raise DataError("tiles/a.png: not an image")

    real_build = build_app

    def build_with_boom() -> typer.Typer:
        app = real_build()
        register(app)
        return app

    monkeypatch.setattr("stainbench.cli.main.build_app", build_with_boom)
    assert main(["boom"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: tiles/a.png: not an image"
    assert main(["--debug", "boom"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_reflow_joins_wrapped_paragraphs_and_keeps_indented_blocks() -> None:
    from stainbench.cli.main import reflow

    text = """Summary line.

    First paragraph wrapped
    over two lines.

      indented diagram ─▶
      second row
    """
    assert reflow(text) == (
        "Summary line.\n\nFirst paragraph wrapped over two lines.\n\n"
        "  indented diagram ─▶\n  second row"
    )


def test_command_help_is_reflowed_from_the_docstring() -> None:
    from stainbench.cli.main import build_app

    app = build_app()
    data = next(g.typer_instance for g in app.registered_groups if g.name == "data")
    demo = next(c for c in data.registered_commands if c.name == "demo")
    assert demo.help is not None
    assert "colour deconvolution with rgb2hed / hed2rgb" in demo.help


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import typer

    real_build = build_app

    def build_with_slow() -> typer.Typer:
        app = real_build()

        @app.command("slow")
        def slow() -> None:
            raise KeyboardInterrupt  # what Ctrl-C raises in the middle of the work

        from stainbench.cli.main import _report_interrupts

        _report_interrupts(app)
        return app

    monkeypatch.setattr("stainbench.cli.main.build_app", build_with_slow)
    assert main(["slow"]) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"


def test_ctrl_c_of_a_real_command_process_is_reported() -> None:
    # `data demo` is long enough to be interrupted; SIGINT once it has begun to write
    import signal
    import tempfile
    import time
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stainbench", "data", "demo", tmp],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 90
        while not any(Path(tmp).iterdir()) and time.monotonic() < deadline:
            time.sleep(0.2)  # until the command has started writing (imports done)
        time.sleep(0.5)
        assert proc.poll() is None, "data demo ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "error: interrupted" in err and "Traceback" not in err
    assert "Task was destroyed" not in err  # zarr's pending I/O tasks, silenced at exit


def test_error_text_in_square_brackets_is_printed_as_written(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import typer

    real_build = build_app

    def build_with_boom() -> typer.Typer:
        app = real_build()

        @app.command("boom")
        def boom() -> None:
            raise DataError("my[red]store.zarr: no such store; pip install 'stainbench[tensorrt]'")

        return app

    monkeypatch.setattr("stainbench.cli.main.build_app", build_with_boom)
    assert main(["boom"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "error: my[red]store.zarr: no such store; pip install 'stainbench[tensorrt]'"
    )
