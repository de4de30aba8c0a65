"""The real tritonserver from the nvidia-pytriton wheel: start, readiness, errors, shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request
from pathlib import Path

import psutil
import pytest

from stainbench.errors import ServingError
from stainbench.serving.runtime import find_triton, free_ports, prepare_backend_dir
from stainbench.serving.server import TritonServer, diagnose_log, models_still_loading
from stainbench.serving.testing import write_numpy_model


def _live_cmdline(p: psutil.Process) -> str:
    """``p``'s command line; empty for a process that has exited (zombies included)."""
    try:
        if not p.is_running() or p.status() == psutil.STATUS_ZOMBIE:
            return ""
        return " ".join(p.cmdline())
    except psutil.Error:  # exited meanwhile, zombie, or not ours to read
        return ""


def _our_tritonservers() -> list[psutil.Process]:
    """Live tritonserver or stub processes started (directly or not) by this test process."""
    names = ("tritonserver", "triton_python_backend_stub")
    procs = psutil.Process().children(recursive=True)
    return [p for p in procs if any(n in _live_cmdline(p) for n in names)]


def test_server_is_ready_on_loopback_and_reports_urls(server: TritonServer) -> None:
    assert server.is_running()
    assert server.ready_models == ["identity", "invert", "reject"]
    assert server.http_url == f"http://127.0.0.1:{server.http_port}"
    assert server.grpc_url == f"grpc://127.0.0.1:{server.grpc_port}"
    assert server.metrics_url == f"http://127.0.0.1:{server.metrics_port}/metrics"
    assert len({server.http_port, server.grpc_port, server.metrics_port}) == 3
    with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{server.http_url}/v2", timeout=5) as r:
        assert json.load(r)["version"] == "2.51.0"
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        assert b"nv_inference_count" in r.read()
    # bound to loopback only, by the process we started
    listening = {
        (c.laddr.ip.removeprefix("::ffff:"), c.laddr.port)  # gRPC binds IPv4-mapped
        for c in psutil.Process(server.pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }
    assert ("127.0.0.1", server.http_port) in listening
    assert ("127.0.0.1", server.grpc_port) in listening
    assert "Started HTTPService" in server.read_log()
    assert server.startup_seconds is not None and server.startup_seconds > 0


def test_cpu_flags_and_environment(server: TritonServer) -> None:
    cmdline = psutil.Process(server.pid).cmdline()
    assert "--pinned-memory-pool-byte-size=0" in cmdline
    assert "--allow-gpu-metrics=false" in cmdline
    env = psutil.Process(server.pid).environ()
    assert env["PATH"].split(os.pathsep)[0] == str(Path(os.sys.executable).parent)
    assert "nvidia_pytriton.libs" in env["LD_LIBRARY_PATH"].split(os.pathsep)[0]
    stubs = [p for p in psutil.Process(server.pid).children() if "stub" in p.name()]
    assert len(stubs) == 3  # one per model instance


def test_stop_leaves_no_process_and_removes_the_workdir(invert_repo: Path) -> None:
    before = {p.pid for p in _our_tritonservers()}  # e.g. the session's server
    srv = TritonServer(invert_repo, models=["invert"]).start()
    pid = srv.pid
    family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    assert any("stub" in p.name() for p in family)
    log_path = srv.log_path
    assert srv.ready_models == ["invert"]  # explicit model control loads only what was asked
    srv.stop()
    srv.stop()  # idempotent
    _gone, alive = psutil.wait_procs(family, timeout=5)
    assert alive == []
    assert not log_path.exists()
    assert not srv.is_running()
    assert {p.pid for p in _our_tritonservers()} <= before


def test_log_path_given_is_kept(invert_repo: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "triton.log"
    with TritonServer(invert_repo, models=["identity"], log_path=log_file) as srv:
        assert srv.log_path == log_file
    assert "successfully loaded 'identity'" in log_file.read_text()


def test_broken_model_names_model_reason_and_log(tmp_path: Path) -> None:
    before = {p.pid for p in _our_tritonservers()}
    write_numpy_model(tmp_path, "fine")
    write_numpy_model(tmp_path, "broken_one", broken=True)
    with pytest.raises(ServingError) as info:
        TritonServer(tmp_path, timeout=60).start()
    message = str(info.value)
    assert "\n" not in message
    assert "model 'broken_one'" in message
    assert "broken on purpose" in message
    log_path = Path(message.rsplit("server log: ", 1)[1].rstrip(")"))
    assert "broken on purpose" in log_path.read_text()  # the log survives a failed start
    assert {p.pid for p in _our_tritonservers()} <= before


def test_slow_model_times_out_naming_it(tmp_path: Path) -> None:
    before = {p.pid for p in _our_tritonservers()}
    write_numpy_model(tmp_path, "sluggish", load_delay_s=60)
    with pytest.raises(ServingError, match=r"not ready within 2 s; still loading: sluggish"):
        TritonServer(tmp_path, timeout=2, grace=1).start()
    assert {p.pid for p in _our_tritonservers()} <= before


def test_interrupt_while_starting_leaves_nothing_running(tmp_path: Path) -> None:
    before = {p.pid for p in _our_tritonservers()}
    write_numpy_model(tmp_path, "sluggish", load_delay_s=60)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.5)
        srv = TritonServer(tmp_path, timeout=60, grace=1)
        with pytest.raises(KeyboardInterrupt):
            srv.start()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not srv.is_running()
    assert {p.pid for p in _our_tritonservers()} <= before


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_unusable_repository(tmp_path: Path, kind: str) -> None:
    repo = tmp_path / "repo"
    if kind == "file":
        repo.write_text("not a folder")
    elif kind == "empty":
        repo.mkdir()
        (repo / "README.md").write_text("no models here")
    with pytest.raises(ServingError, match=r"model repository .*repo"):
        TritonServer(repo).start()


def test_unknown_model_requested(invert_repo: Path) -> None:
    with pytest.raises(ServingError, match=r"model 'nope' is not in .* \(it holds: identity"):
        TritonServer(invert_repo, models=["nope"]).start()


def test_port_in_use_is_refused_before_start(invert_repo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            ServingError, match=rf"port {port} on 127.0.0.1 is already in use.*--grpc-port"
        ):
            TritonServer(invert_repo, grpc_port=port).start()


def test_url_before_start_is_an_error(invert_repo: Path) -> None:
    with pytest.raises(ServingError, match="not been started"):
        _ = TritonServer(invert_repo).http_url


def test_backend_dir_gets_a_fresh_executable_stub(tmp_path: Path) -> None:
    install = find_triton()
    dest = prepare_backend_dir(install, tmp_path / "backends")
    stub = dest / "python" / "triton_python_backend_stub"
    stub.chmod(0o100)  # what Triton 2.51 does to a stub whose probe run failed
    prepare_backend_dir(install, dest)
    assert stub.stat().st_mode & 0o777 == 0o755
    assert (dest / "python" / "libtriton_python.so").is_file()
    assert (dest / "python" / "triton_python_backend_utils.py").is_file()


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(3)
    assert len(set(ports)) == 3
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


FAILED = (
    r"E1126 01:10:43.395258 5800 model_lifecycle.cc:642] \"failed to load 'broken' version 1: "
    r'Internal: RuntimeError: boom\n\nAt:\n  model.py(1)"'
)
LOG = r"""I1126 01:10:43.261092 5800 model_lifecycle.cc:472] "loading: broken:1"
I1126 01:10:43.261092 5800 model_lifecycle.cc:472] "loading: good:1"
E1126 01:10:43.259066 5800 server.cc:241] "CudaDriverHelper has not been initialized."
{failed}
I1126 01:10:43.395327 5800 model_lifecycle.cc:839] "successfully loaded 'good'"
E1126 01:10:44.777007 5800 tritonserver.cc:2607] "Internal: failed to load all models"
"""
LOG = LOG.replace("{failed}", FAILED)


def test_diagnose_log_prefers_the_failing_model() -> None:
    assert (
        diagnose_log(LOG)
        == "model 'broken' (version 1) failed to load: Internal: RuntimeError: boom"
    )
    assert models_still_loading(LOG) == ["broken"]


def test_diagnose_log_port_and_generic_errors() -> None:
    port = (
        'E1126 01:10:44.793374 5800 main.cc:245] "failed to start GRPC service: '
        "Unavailable - Socket '127.0.0.1:18011' already in use \""
    )
    assert diagnose_log(port) == (
        "failed to start the GRPC service: Unavailable - Socket '127.0.0.1:18011' already in use"
    )
    generic = 'E1126 01:10:44.777007 5800 tritonserver.cc:2607] "Internal: something odd"'
    assert diagnose_log(generic) == "Internal: something odd"
    assert diagnose_log("") == ""
    assert diagnose_log("plain last line\n") == "plain last line"


def test_environment_puts_venv_and_wheel_libraries_first() -> None:
    import sysconfig

    from stainbench.serving.runtime import server_environment

    install = find_triton()
    env = server_environment(install, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"})
    assert env["PATH"].split(os.pathsep) == [str(Path(os.sys.executable).parent), "/usr/bin"]
    ld = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert ld == [str(install.libs), sysconfig.get_config_var("LIBDIR"), "/opt/lib"]
    assert "PATH" in server_environment(install, {})


def test_command_flags_for_cpu_gpu_and_model_selection(tmp_path: Path) -> None:
    install = find_triton()
    cpu = TritonServer(tmp_path, "0.0.0.0", 1, 2, 3, gpu=False, models=["a", "b"], grace=4)
    cmd = cpu.command(install, tmp_path / "backends")
    assert cmd[0] == str(install.binary)
    assert "--http-address=0.0.0.0" in cmd and "--grpc-port=2" in cmd and "--metrics-port=3" in cmd
    assert "--model-control-mode=explicit" in cmd
    assert [c for c in cmd if c.startswith("--load-model=")] == ["--load-model=a", "--load-model=b"]
    assert "--pinned-memory-pool-byte-size=0" in cmd and "--exit-timeout-secs=4" in cmd
    gpu = TritonServer(tmp_path, gpu=True, extra_args=["--log-info=false"]).command(
        install, tmp_path
    )
    assert "--pinned-memory-pool-byte-size=0" not in gpu
    assert "--allow-gpu-metrics=false" not in gpu
    assert not any(c.startswith("--model-control-mode") for c in gpu)
    assert gpu[-1] == "--log-info=false"
    # a server bound to the wildcard address is reached over loopback
    cpu.http_port = 8000
    assert cpu.http_url == "http://127.0.0.1:8000"
