"""Server safety: bad hosts and repository paths get one clear line; doomed starts fail fast.

Real sockets and the real tritonserver. 192.0.2.1 is TEST-NET-1 (RFC 5737): never an
address of this machine.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stainbench.cli.main import main
from stainbench.errors import ServingError
from stainbench.serving.runtime import BindError, check_host, free_ports, port_in_use
from stainbench.serving.server import TritonServer, path_problem, stub_crash
from stainbench.serving.testing import write_numpy_model

NOT_OURS = "192.0.2.1"
ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, " ".join(capsys.readouterr().err.split())


def test_host_problems_are_told_apart() -> None:
    with pytest.raises(BindError, match=r"cannot resolve host 'localhots\.invalid'"):
        check_host("localhots.invalid")
    with pytest.raises(BindError, match=rf"cannot bind to {NOT_OURS}: it is not an address"):
        check_host(NOT_OURS)
    with pytest.raises(BindError, match="host to bind is empty"):
        check_host("")
    check_host("127.0.0.1")
    check_host("localhost")
    with pytest.raises(BindError, match="not an address of this machine"):
        free_ports(1, NOT_OURS)
    with pytest.raises(BindError, match="cannot resolve"):
        port_in_use("localhots.invalid", 18130)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert port_in_use("127.0.0.1", taken.getsockname()[1])
        assert port_in_use("localhost", taken.getsockname()[1])
    (free,) = free_ports(1)
    assert not port_in_use("127.0.0.1", free)


@pytest.mark.parametrize(
    ("host", "expected"),
    [("localhots.invalid", "cannot resolve host 'localhots.invalid'"), (NOT_OURS, "not an addr")],
)
@pytest.mark.parametrize("port", ["0", "18130"])
def test_serve_bad_host_is_one_line(
    invert_repo: Path, host: str, expected: str, port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["serve", "--repo", str(invert_repo), "--host", host, "--http-port", port]
    code, err = _run([*args, "--grpc-port", "0", "--metrics-port", "0"], capsys)
    assert code == 1
    assert err.startswith("error: ") and expected in err and "already in use" not in err
    assert "127.0.0.1" in err and "0.0.0.0" in err  # says what to use instead
    assert "Traceback" not in err


def test_path_problem_names_the_characters(tmp_path: Path) -> None:
    assert path_problem(tmp_path / "plain-repo_1.2,x+y@z=w") == ""
    assert "contains a space" in path_problem(Path("/data/my models/repo"))
    assert "'ö'" in path_problem(Path("/data/repö"))
    assert "'$'" in path_problem(Path("/data/d$x")) and "'('" in path_problem(Path("/p(1)"))


@pytest.mark.parametrize("folder", ["with space", "repö", "cost$1", "copy(1)"])
def test_unservable_repository_path_is_refused_at_once(
    tmp_path: Path, folder: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / folder
    write_numpy_model(repo, "invert")
    t0 = time.monotonic()
    code, err = _run(["serve", "--repo", str(repo), "--http-port", "0", "--grpc-port", "0"], capsys)
    assert time.monotonic() - t0 < 10  # refused before any server starts
    assert code == 1
    assert f"cannot serve the model repository {repo}" in err
    assert "python backend cannot load models from a path with spaces" in err
    assert "ln -s" in err and "Traceback" not in err


def test_symlink_from_a_plain_path_serves_such_a_repository(tmp_path: Path) -> None:
    real = tmp_path / "my models"
    write_numpy_model(real, "invert")
    link = tmp_path / "plain"
    link.symlink_to(real)
    with TritonServer(link, timeout=60, grace=1) as server:
        assert server.repo == link
        assert server.ready_models == ["invert"]


class _Unchecked(TritonServer):
    """A server whose up-front repository check is skipped, to reach Triton's own failure."""

    def _check_repository(self) -> None:
        return None


def test_crashed_stub_fails_fast_instead_of_waiting_for_the_timeout(tmp_path: Path) -> None:
    repo = tmp_path / "with space"
    write_numpy_model(repo, "invert")
    t0 = time.monotonic()
    with pytest.raises(ServingError) as info:
        _Unchecked(repo, timeout=300, grace=1).start()
    assert time.monotonic() - t0 < 60  # Triton alone waits for the dead stub far longer
    message = str(info.value)
    assert "\n" not in message
    assert "model process of tritonserver crashed while loading" in message
    assert "std::invalid_argument" in message and "invert never finished loading" in message


def test_failed_model_fails_fast_while_another_still_loads(tmp_path: Path) -> None:
    write_numpy_model(tmp_path, "broken_one", broken=True)
    write_numpy_model(tmp_path, "sluggish", load_delay_s=90)
    t0 = time.monotonic()
    with pytest.raises(ServingError) as info:
        TritonServer(tmp_path, timeout=300, grace=1).start()
    assert time.monotonic() - t0 < 45  # not after sluggish's 90 s
    message = str(info.value)
    assert "model 'broken_one' (version 1) failed to load" in message
    assert "broken on purpose" in message and "server log: " in message


def test_stub_crash_and_shell_error_are_recognised() -> None:
    crash = "I1 x\nterminate called after throwing an instance of 'std::invalid_argument'\n"
    assert stub_crash(crash + "  what():  stol\n") == "std::invalid_argument: stol"
    shell = "bash: -c: line 1: syntax error near unexpected token `('\n"
    assert stub_crash(shell) == "bash: syntax error near unexpected token `('"
    assert stub_crash('I1126 model_lifecycle.cc:472] "loading: m:1"\n') == ""


def test_demo_paths_in_serving_doc_are_made_by_the_makefile() -> None:
    doc = (ROOT / "docs" / "SERVING.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    out = re.search(r"^DEMO_OUT \?= (\S+)", makefile, re.M)
    repo = re.search(r"^REPO \?= (\S+)", makefile, re.M)
    assert out and repo
    expanded = makefile.replace("$(DEMO_OUT)", out.group(1))
    made = set(re.findall(rf"\b({re.escape(out.group(1))}/[\w./-]*\w)", expanded))
    cited = set(re.findall(r"\b(demo_out/[\w./-]*\w)", doc))
    assert cited, "the doc cites no demo path any more: update this test"
    assert cited <= made, f"docs/SERVING.md cites paths make demo does not write: {cited - made}"
    assert f"--repo {repo.group(1)}" in doc


def test_temporary_folder_with_a_space_is_refused(invert_repo: Path, tmp_path: Path) -> None:
    tmp = tmp_path / "t mp"
    tmp.mkdir()
    args = [sys.executable, "-m", "stainbench", "serve", "--repo", str(invert_repo)]
    done = subprocess.run(
        [*args, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
        env={**os.environ, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    err = " ".join(done.stderr.split())
    assert done.returncode == 1, err
    assert f"the temporary folder {tmp} contains a space" in err and "set TMPDIR" in err
    assert "Traceback" not in err and list(tmp.iterdir()) == []
