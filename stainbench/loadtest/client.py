"""The calls a load-test user makes: one inference over HTTP or gRPC, checked, sized.

Each call returns the number of response bytes on success and raises
:class:`InferenceFailed` (one line: Triton's own error message, or what was wrong with the
answer) otherwise. Network errors (refused, reset, timed out) propagate as they are; the
Locust user records them as failures under the same name.

Both clients are gevent-friendly: the HTTP one sends through a geventhttpclient pool (the one
Locust's ``FastHttpUser`` owns), the gRPC one needs :func:`enable_grpc_gevent` called in the
process before the first channel is created.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from stainbench.loadtest.payload import OUTPUT_NAME, GrpcPayload, HttpPayload


class InferenceFailed(Exception):
    """The server answered, but with an error or with an output that is not what was asked."""


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def triton_error_message(status: int, body: bytes) -> str:
    """``"HTTP 400: <Triton's error text>"`` from an error response body (JSON or not)."""
    try:
        message = str(json.loads(body.decode("utf-8"))["error"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        message = body[:200].decode("utf-8", "replace") or "(empty body)"
    return _one_line(f"HTTP {status}: {message}")


def check_http_response(
    status: int, header_length: str | None, body: bytes, payload: HttpPayload
) -> int:
    """Validate one binary-tensor HTTP response; returns ``len(body)``.

    ``header_length`` is the ``Inference-Header-Content-Length`` response header. The JSON
    header must announce ``OUTPUT`` as UINT8 with the request's shape, and exactly
    ``payload.output_nbytes`` bytes of tensor data must follow it.
    """
    if status != 200:
        raise InferenceFailed(triton_error_message(status, body))
    if header_length is None:
        raise InferenceFailed("response has no Inference-Header-Content-Length (not binary)")
    n = int(header_length)
    try:
        header = json.loads(body[:n])
        out = next(o for o in header["outputs"] if o["name"] == OUTPUT_NAME)
    except (ValueError, KeyError, TypeError, StopIteration):
        raise InferenceFailed(f"response header has no {OUTPUT_NAME} output") from None
    shape = tuple(int(d) for d in out.get("shape", ()))
    if out.get("datatype") != "UINT8" or shape != payload.shape:
        raise InferenceFailed(
            f"{OUTPUT_NAME} is {out.get('datatype')} {list(shape)}, "
            f"expected UINT8 {list(payload.shape)}"
        )
    if len(body) - n != payload.output_nbytes:
        raise InferenceFailed(
            f"{OUTPUT_NAME} has {len(body) - n} bytes, expected {payload.output_nbytes}"
        )
    return len(body)


class HttpInferClient:
    """POST ``/v2/models/<model>/infer`` through a geventhttpclient ``HTTPClientPool``.

    ``base_url`` like ``http://127.0.0.1:8000``. Responses are asked uncompressed
    (``Accept-Encoding: identity``): otherwise Triton gzips every tile it returns.
    """

    def __init__(self, pool: Any, base_url: str) -> None:
        from geventhttpclient.url import URL

        self._pool = pool
        self._url = URL(base_url.rstrip("/") + "/")
        self._base_path = self._url.path.rstrip("/")

    def infer(self, model: str, payload: HttpPayload) -> int:
        """Send one request; returns the response size in bytes."""
        client = self._pool.get_client(self._url)
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(payload.header_length),
            "Accept-Encoding": "identity",
        }
        response = client.request(
            "POST", f"{self._base_path}/v2/models/{model}/infer", body=payload.body, headers=headers
        )
        try:
            body = response.read()
        finally:
            response.release()
        length = response.get("inference-header-content-length")
        return check_http_response(response.status_code, length, body, payload)


def enable_grpc_gevent() -> None:
    """Make grpcio cooperate with gevent; call once per process before the first channel."""
    from grpc.experimental import gevent as grpc_gevent

    grpc_gevent.init_gevent()


class GrpcInferClient:
    """tritonclient's gRPC client for one user; ``url`` like ``127.0.0.1:8001``.

    ``timeout_s`` bounds each call (seconds). Call :meth:`close` when the user stops: an open
    channel can keep the process from exiting.
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        import tritonclient.grpc as grpcclient

        self._client = grpcclient.InferenceServerClient(url)
        self._timeout_s = timeout_s

    def infer(self, model: str, payload: GrpcPayload) -> int:
        """Send one request; returns the output size in bytes."""
        from tritonclient.utils import InferenceServerException

        try:
            result = self._client.infer(
                model, payload.inputs, outputs=payload.outputs, client_timeout=self._timeout_s
            )
        except InferenceServerException as exc:
            raise InferenceFailed(_one_line(f"gRPC {exc.status()}: {exc.message()}")) from None
        out = result.as_numpy(OUTPUT_NAME)
        if out is None or out.dtype != np.uint8 or out.shape != payload.shape:
            got = "nothing" if out is None else f"{out.dtype} {list(out.shape)}"
            raise InferenceFailed(f"{OUTPUT_NAME} is {got}, expected uint8 {list(payload.shape)}")
        return int(out.nbytes)

    def close(self) -> None:
        self._client.close()
