"""TritonClient against the real server: tiles in, tiles out, over gRPC and HTTP."""

from __future__ import annotations

import numpy as np
import pytest

from stainbench.errors import ServingError
from stainbench.serving.client import ModelStatistics, TritonClient, parse_url
from stainbench.serving.runtime import free_ports
from stainbench.serving.server import TritonServer


@pytest.fixture(params=["grpc", "http"])
def client(request: pytest.FixtureRequest, server: TritonServer) -> TritonClient:
    url = server.grpc_url if request.param == "grpc" else server.http_url
    with TritonClient(url) as c:
        assert c.protocol == request.param
        yield c


def test_infer_returns_the_models_output(client: TritonClient) -> None:
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(3, 32, 48, 3), dtype=np.uint8)
    out = client.infer("invert", tiles)
    assert out.dtype == np.uint8 and out.shape == tiles.shape
    np.testing.assert_array_equal(out, 255 - tiles)
    np.testing.assert_array_equal(client.infer("identity", tiles[:1]), tiles[:1])


def test_infer_accepts_non_contiguous_tiles(client: TritonClient) -> None:
    tiles = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)[:, ::2, ::2]
    np.testing.assert_array_equal(client.infer("invert", tiles), 255 - tiles)


def test_models_ready_and_config(client: TritonClient) -> None:
    infos = client.models()
    assert [(m.name, m.state) for m in infos] == [
        ("identity", "READY"),
        ("invert", "READY"),
        ("reject", "READY"),
    ]
    assert client.is_live()
    assert client.is_ready("invert")
    assert not client.is_ready("nope")
    config = client.config("identity")
    assert config["name"] == "identity"
    assert config["max_batch_size"] == 4
    assert config["input"][0]["dims"] == [-1, -1, 3]
    assert config["input"][0]["data_type"] == "TYPE_UINT8"
    client.require_ready("invert")


def test_statistics_count_requests_and_tiles(client: TritonClient) -> None:
    tiles = np.zeros((2, 16, 16, 3), np.uint8)
    before = client.statistics("invert")
    for _ in range(3):
        client.infer("invert", tiles)
    delta = client.statistics("invert") - before
    assert delta.model == "invert"
    assert delta.success_count == 3
    assert delta.inference_count == 6
    assert 1 <= delta.execution_count <= 3
    assert sum(size * n for size, n in delta.batch_executions.items()) == 6
    assert delta.compute_infer_ns > 0 and delta.queue_ns > 0
    assert delta.success_ns >= delta.compute_infer_ns
    assert set(delta.to_dict()) >= {"queue_ns", "compute_input_ns", "compute_output_ns"}


def test_unknown_model(client: TritonClient) -> None:
    with pytest.raises(ServingError, match=r"model 'nope' at .*(not found|unknown)") as info:
        client.infer("nope", np.zeros((1, 8, 8, 3), np.uint8))
    assert "\n" not in str(info.value)
    with pytest.raises(ServingError, match=r"model 'nope' is unknown to .*ready models: identity"):
        client.require_ready("nope")


def test_tiles_the_server_rejects(client: TritonClient) -> None:
    with pytest.raises(ServingError, match=r"model 'reject' .*rejects every request"):
        client.infer("reject", np.zeros((1, 8, 8, 3), np.uint8))
    # batch larger than the model's max_batch_size (4)
    with pytest.raises(ServingError, match=r"model 'identity' .*batch") as info:
        client.infer("identity", np.zeros((5, 8, 8, 3), np.uint8))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "tiles",
    [
        np.zeros((1, 8, 8, 3), np.float32),
        np.zeros((8, 8, 3), np.uint8),
        np.zeros((1, 8, 8, 4), np.uint8),
        np.zeros((0, 8, 8, 3), np.uint8),
        [[1, 2, 3]],
    ],
)
def test_bad_tiles_are_refused_before_sending(client: TritonClient, tiles: object) -> None:
    with pytest.raises(ServingError, match=r"tiles must be"):
        client.infer("invert", tiles)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_server(protocol: str) -> None:
    (port,) = free_ports(1)
    c = TritonClient(f"127.0.0.1:{port}", protocol, timeout=5)
    with pytest.raises(
        ServingError, match=rf"cannot reach the Triton server at {protocol}://"
    ) as e:
        c.infer("invert", np.zeros((1, 8, 8, 3), np.uint8))
    assert "stainbench serve" in str(e.value) and "\n" not in str(e.value)
    assert not c.is_live()
    with pytest.raises(ServingError, match="cannot reach"):
        c.models()
    c.close()
    with pytest.raises(ServingError, match="is closed"):
        c.models()


@pytest.mark.parametrize(
    ("url", "protocol", "expected"),
    [
        ("http://127.0.0.1:8000", None, ("127.0.0.1:8000", "http")),
        ("grpc://localhost:8001/", None, ("localhost:8001", "grpc")),
        ("127.0.0.1:8001", None, ("127.0.0.1:8001", "grpc")),
        ("127.0.0.1:8000", "http", ("127.0.0.1:8000", "http")),
    ],
)
def test_parse_url(url: str, protocol: str | None, expected: tuple[str, str]) -> None:
    assert parse_url(url, protocol) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "protocol", "message"),
    [
        ("http://127.0.0.1:8000", "grpc", "is a http URL but protocol 'grpc'"),
        ("https://host:443", None, "TLS is not supported"),
        ("ftp://host:1", None, "unknown scheme 'ftp'"),
        ("localhost", None, "expected HOST:PORT"),
        ("127.0.0.1:8000", "udp", "unknown protocol 'udp'"),
    ],
)
def test_parse_url_errors(url: str, protocol: str | None, message: str) -> None:
    with pytest.raises(ServingError, match=message):
        parse_url(url, protocol)  # type: ignore[arg-type]


def test_statistics_parse_grpc_and_http_json_alike() -> None:
    http = {
        "model_stats": [
            {
                "name": "m",
                "version": "1",
                "inference_count": 6,
                "execution_count": 2,
                "inference_stats": {
                    "success": {"count": 3, "ns": 900},
                    "fail": {"count": 0, "ns": 0},
                    "queue": {"count": 3, "ns": 30},
                    "compute_input": {"count": 2, "ns": 20},
                    "compute_infer": {"count": 2, "ns": 600},
                    "compute_output": {"count": 2, "ns": 40},
                },
                "batch_stats": [
                    {"batch_size": 2, "compute_infer": {"count": 1, "ns": 200}},
                    {"batch_size": 4, "compute_infer": {"count": 1, "ns": 400}},
                ],
            }
        ]
    }

    def stringify(node: object) -> object:
        if isinstance(node, dict):
            return {k: stringify(v) for k, v in node.items() if v != {"count": 0, "ns": 0}}
        if isinstance(node, list):
            return [stringify(v) for v in node]
        return str(node) if isinstance(node, int) else node

    a = ModelStatistics.from_json("m", http)
    b = ModelStatistics.from_json("m", stringify(http))  # gRPC's JSON: int64 as strings
    assert a == b
    assert (a.success_count, a.inference_count, a.execution_count) == (3, 6, 2)
    assert (a.queue_ns, a.compute_input_ns, a.compute_infer_ns, a.compute_output_ns) == (
        30,
        20,
        600,
        40,
    )
    assert a.batch_executions == {2: 1, 4: 1}
    zero = a - a
    assert zero.success_count == 0 and zero.batch_executions == {}
    with pytest.raises(ValueError, match="cannot subtract"):
        _ = a - ModelStatistics("other")
