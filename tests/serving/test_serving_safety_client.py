"""Client safety: a URL with the wrong scheme for its port gets one line, bugs keep tracebacks.

Against the session's real tritonserver: an ``http://`` URL on its gRPC port (the HTTP parser
sees HTTP/2 frames) and a ``grpc://`` URL on its HTTP port.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stainbench.cli.main import main
from stainbench.errors import ServingError
from stainbench.serving.client import TritonClient, WrongProtocolError
from stainbench.serving.server import TritonServer


def _ports(server: TritonServer) -> tuple[str, str]:
    return server.http_url.rsplit(":", 1)[1], server.grpc_url.rsplit(":", 1)[1]


def test_http_url_on_the_grpc_port_says_so(server: TritonServer) -> None:
    _, grpc = _ports(server)
    with TritonClient(f"http://127.0.0.1:{grpc}", timeout=10) as client:
        for call in (client.is_live, client.models, lambda: client.is_ready("invert")):
            with pytest.raises(WrongProtocolError) as info:
                call()
            message = str(info.value)
            assert "\n" not in message
            assert f"http://127.0.0.1:{grpc} does not speak HTTP" in message
            assert f"use grpc://127.0.0.1:{grpc}" in message


def test_grpc_url_on_the_http_port_says_so(server: TritonServer) -> None:
    http, _ = _ports(server)
    with TritonClient(f"grpc://127.0.0.1:{http}", timeout=10) as client:
        with pytest.raises(WrongProtocolError, match=rf"use http://127\.0\.0\.1:{http}\b"):
            client.is_live()
        with pytest.raises(WrongProtocolError, match="closed the gRPC connection"):
            client.infer("invert", np.zeros((1, 8, 8, 3), np.uint8))


def test_right_urls_still_work(server: TritonServer) -> None:
    for url in (server.http_url, server.grpc_url):
        with TritonClient(url, timeout=10) as client:
            assert client.is_live()


def test_programming_errors_keep_their_type(server: TritonServer) -> None:
    """Only transport errors become ServingError: a bug in the called code is not hidden."""

    def bug() -> None:
        raise RuntimeError("a bug in this code, not a transport error")

    with TritonClient(server.http_url, timeout=10) as client:
        with pytest.raises(ZeroDivisionError):
            client._call("division", lambda: 1 / 0)
        with pytest.raises(RuntimeError, match="a bug in this code"):
            client._call("bug", bug)
        with pytest.raises(TypeError):  # a wrong call into tritonclient stays a TypeError
            client._call("bad call", lambda: client._client.is_model_ready())


def _val_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for domain in ("A", "B"):
        (root / domain).mkdir(parents=True)
        for i in range(2):
            tile = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(tile).save(root / domain / f"t{i}.png")
    return root


def test_cli_wrong_scheme_is_one_red_line(
    server: TritonServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, grpc = _ports(server)
    url = f"http://127.0.0.1:{grpc}"
    tiles = tmp_path / "tiles.npy"
    np.save(tiles, np.zeros((2, 16, 16, 3), np.uint8))
    runs = {
        "loadtest": ["loadtest", "--url", url, "--tiles", str(tiles), "--run-time", "2s"],
        "compare": [
            "compare",
            "--val-set",
            str(_val_folder(tmp_path / "val")),
            "--url",
            url,
            "--out",
            str(tmp_path / "cmp"),
        ],
    }
    for name, args in runs.items():
        code = main([*args, "--out", str(tmp_path / name)] if name == "loadtest" else args)
        err = " ".join(capsys.readouterr().err.split())
        assert code == 1, name
        assert "Traceback" not in err and "HTTPParseError" not in err, name
        assert f"error: the server at {url} does not speak HTTP" in err, name
        assert f"grpc://127.0.0.1:{grpc}" in err, name


def test_unresolvable_grpc_host_is_unreachable() -> None:
    with TritonClient("grpc://no-such-host.invalid:8001", timeout=5) as client:
        assert not client.is_live()
        with pytest.raises(ServingError, match="cannot reach the Triton server"):
            client.models()
