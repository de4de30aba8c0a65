"""The real server under bad requests: each gets an error status and a message, and good
requests before and after get the same, correct answer."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from urllib.parse import urlsplit

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from stainbench.serving.server import TritonServer

Body = tuple[bytes, int | None]


def _body(arr: np.ndarray, name: str = "INPUT", datatype: str | None = None) -> Body:
    dtype = datatype or httpclient.np_to_triton_dtype(arr.dtype)
    tensor = httpclient.InferInput(name, list(arr.shape), dtype)
    tensor.set_data_from_numpy(arr, binary_data=True)
    out = httpclient.InferRequestedOutput("OUTPUT", binary_data=True)
    body, length = httpclient.InferenceServerClient.generate_request_body([tensor], [out])
    return bytes(body), length


def _post(server: TritonServer, model: str, body: bytes, header_length: int | None):
    """POST raw bytes; returns (status, headers, body)."""
    parts = urlsplit(server.http_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    headers = {"Content-Type": "application/octet-stream", "Accept-Encoding": "identity"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def _good_output(server: TritonServer, tiles: np.ndarray) -> np.ndarray:
    status, headers, data = _post(server, "invert", *_body(tiles))
    assert status == 200, data[:300]
    n = int(headers["Inference-Header-Content-Length"])
    header = json.loads(data[:n])
    assert header["outputs"][0]["shape"] == list(tiles.shape)
    return np.frombuffer(data[n:], np.uint8).reshape(tiles.shape)


GOOD = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)


def _truncated() -> Body:
    body, n = _body(GOOD)
    return body[: n + 100], n  # header intact, 100 of 6144 tensor bytes


#: name -> (model, request body factory, expected status, fragment of the error message)
BAD_HTTP: dict[str, tuple[str, Callable[[], Body], int, str]] = {
    "wrong shape (4 channels)": (
        "invert", lambda: _body(np.zeros((1, 32, 32, 4), np.uint8)), 400, "unexpected shape"
    ),
    "wrong dtype (float32)": (
        "invert", lambda: _body(GOOD.astype(np.float32)), 400, "data-type is 'FP32'"
    ),
    "empty batch": ("invert", lambda: _body(np.zeros((0, 32, 32, 3), np.uint8)), 400, "size"),
    "tile larger than the model accepts": (
        "small32", lambda: _body(np.zeros((1, 64, 64, 3), np.uint8)), 400, "Expected [-1,32,32,3]"
    ),
    "batch larger than max_batch_size": (
        "identity", lambda: _body(np.zeros((5, 32, 32, 3), np.uint8)), 400, "batch-size must be"
    ),
    "wrong input name": ("invert", lambda: _body(GOOD, name="IMAGE"), 400, "'IMAGE'"),
    "unknown model": ("no_such_model", lambda: _body(GOOD), 404, "unknown model"),
    # Triton 2.51 answers an unparsable header with 500 (not 400), with a clear message.
    "garbage body": ("invert", lambda: (b"\x00\xff garbage \x13" * 50, None), 500, "JSON"),
    "garbage with a header length": ("invert", lambda: (bytes(range(256)) * 4, 64), 500, "JSON"),
    "truncated binary tensor": ("invert", _truncated, 400, "additional bytes"),
}  # fmt: skip


def test_bad_http_requests_get_errors_and_the_server_keeps_answering(
    lt_server: TritonServer,
) -> None:
    before = _good_output(lt_server, GOOD)
    np.testing.assert_array_equal(before, 255 - GOOD)
    for case, (model, make, status, fragment) in BAD_HTTP.items():
        code, _, data = _post(lt_server, model, *make())
        message = json.loads(data)["error"]
        assert code == status, f"{case}: status {code}: {message}"
        assert fragment in message, f"{case}: {message!r}"
    after = _good_output(lt_server, GOOD)
    np.testing.assert_array_equal(after, before)
    assert lt_server.is_running()


@pytest.mark.parametrize(
    ("model", "tiles", "fragment"),
    [
        ("invert", np.zeros((1, 32, 32, 4), np.uint8), "unexpected shape"),
        ("invert", np.zeros((1, 32, 32, 3), np.float32), "FP32"),
        ("small32", np.zeros((1, 48, 48, 3), np.uint8), "unexpected shape"),
        ("no_such_model", np.zeros((1, 32, 32, 3), np.uint8), "unknown model"),
    ],
)
def test_bad_grpc_requests_get_errors_and_the_server_keeps_answering(
    lt_server: TritonServer, model: str, tiles: np.ndarray, fragment: str
) -> None:
    client = grpcclient.InferenceServerClient(lt_server.grpc_url.removeprefix("grpc://"))
    try:
        tensor = grpcclient.InferInput(
            "INPUT", list(tiles.shape), grpcclient.np_to_triton_dtype(tiles.dtype)
        )
        tensor.set_data_from_numpy(tiles)
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, [tensor], client_timeout=20)
        assert fragment in info.value.message()
        good = grpcclient.InferInput("INPUT", list(GOOD.shape), "UINT8")
        good.set_data_from_numpy(GOOD)
        result = client.infer("invert", [good], client_timeout=20)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT"), 255 - GOOD)
    finally:
        client.close()
