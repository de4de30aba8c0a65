"""`stainbench serve` as a real process: readiness, clean stop on SIGTERM/Ctrl-C, bad input."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from stainbench.cli.main import main
from stainbench.serving.runtime import free_ports
from stainbench.serving.testing import write_numpy_model


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_runs_until_signalled_and_leaves_no_orphans(
    invert_repo: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    http, grpc, metrics = free_ports(3)
    log_file = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "stainbench", "serve", "--repo", str(invert_repo)]
    cmd += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    cmd += ["--model", "invert", "--log", str(log_file)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        deadline = time.monotonic() + 60
        while not _ready(http):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "stainbench serve did not become ready"
            time.sleep(0.2)
        family = psutil.Process(proc.pid).children(recursive=True)
        names = [p.name() for p in family]
        assert "tritonserver" in names and "triton_python_backend_stub" in names
        time.sleep(0.5)  # let it print the table
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{http}" in out
    assert f"grpc://127.0.0.1:{grpc}" in out
    assert f"http://127.0.0.1:{metrics}/metrics" in out
    assert "invert" in out and "READY" in out
    assert "tritonserver stopped" in err
    _, alive = psutil.wait_procs(family, timeout=5)
    assert alive == []
    assert not _ready(http)
    assert "successfully loaded 'invert'" in log_file.read_text()


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, " ".join(err.split())


def test_serve_missing_and_empty_repository(tmp_path: Path, capsys) -> None:
    code, err = _run(["serve", "--repo", str(tmp_path / "nowhere")], capsys)
    assert code == 1 and "does not exist" in err and "stainbench export" in err
    (tmp_path / "empty").mkdir()
    code, err = _run(["serve", "--repo", str(tmp_path / "empty")], capsys)
    assert code == 1 and "holds no model folder" in err


def test_serve_port_in_use(invert_repo: Path, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = _run(["serve", "--repo", str(invert_repo), "--http-port", str(port)], capsys)
    assert code == 1
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--http-port" in err


def test_serve_bad_port_is_a_usage_error(invert_repo: Path, capsys) -> None:
    code, err = _run(["serve", "--repo", str(invert_repo), "--grpc-port", "70000"], capsys)
    assert code == 2 and "70000 is not a TCP port" in err


def test_serve_broken_model(tmp_path: Path, capsys) -> None:
    write_numpy_model(tmp_path, "wrecked", broken=True)
    args = ["serve", "--repo", str(tmp_path), "--http-port", "0", "--grpc-port", "0"]
    code, err = _run([*args, "--metrics-port", "0"], capsys)
    assert code == 1
    assert "model 'wrecked' (version 1) failed to load" in err
    assert "broken on purpose" in err and "server log:" in err
