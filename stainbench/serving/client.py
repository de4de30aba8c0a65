"""A thin client for a Triton server serving stainbench models (gRPC or HTTP).

Served models take ``INPUT`` uint8 ``(B, H, W, 3)`` RGB tiles and return ``OUTPUT`` of the same
dtype and shape (``docs/CONTRACTS.md`` section 3). Tensors travel as raw bytes: protobuf
``raw_input_contents`` over gRPC, the binary-tensor extension over HTTP, never JSON, and HTTP
responses are requested uncompressed (``Accept-Encoding: identity``).

Every failure (server unreachable, unknown or unready model, a tile the server rejects) is a
:class:`~stainbench.errors.ServingError` with a one-line message naming the URL and model.
One client is meant for one thread: give each load-generating thread its own.
"""

from __future__ import annotations

import contextlib
import http.client
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

from stainbench.errors import ServingError

Protocol = Literal["grpc", "http"]
T = TypeVar("T")

#: Config keys whose values are int64 in the protobuf (strings in gRPC's JSON form).
_INT_KEYS = frozenset(
    {"dims", "max_batch_size", "preferred_batch_size", "max_queue_delay_microseconds"}
)


class WrongProtocolError(ServingError):
    """Something answers at the URL, but not in the client's protocol (HTTP vs gRPC)."""


@dataclass(frozen=True)
class ModelInfo:
    """One entry of the server's model repository index."""

    name: str
    version: str  #: "" when the model was never loaded
    state: str  #: "READY", "UNAVAILABLE", "LOADING", "UNLOADING" or "" (not loaded)
    reason: str = ""


@dataclass(frozen=True)
class ModelStatistics:
    """Cumulative server-side statistics of one model (all versions summed).

    Times are nanoseconds summed over requests (queue, compute_*) as reported by Triton's
    statistics extension; ``inference_count`` counts tiles (batch elements),
    ``execution_count`` model executions (batches), ``success_count`` requests. Subtract two
    snapshots (``after - before``) to get a window's statistics.
    """

    model: str
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0
    #: executions per realised batch size
    batch_executions: Mapping[int, int] = field(default_factory=dict)

    def __sub__(self, other: ModelStatistics) -> ModelStatistics:
        if other.model != self.model:
            raise ValueError(f"cannot subtract statistics of {other.model!r} from {self.model!r}")
        sizes = set(self.batch_executions) | set(other.batch_executions)
        batches = {
            s: self.batch_executions.get(s, 0) - other.batch_executions.get(s, 0) for s in sizes
        }
        return ModelStatistics(
            model=self.model,
            success_count=self.success_count - other.success_count,
            success_ns=self.success_ns - other.success_ns,
            fail_count=self.fail_count - other.fail_count,
            queue_ns=self.queue_ns - other.queue_ns,
            compute_input_ns=self.compute_input_ns - other.compute_input_ns,
            compute_infer_ns=self.compute_infer_ns - other.compute_infer_ns,
            compute_output_ns=self.compute_output_ns - other.compute_output_ns,
            inference_count=self.inference_count - other.inference_count,
            execution_count=self.execution_count - other.execution_count,
            batch_executions={s: n for s, n in sorted(batches.items()) if n},
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["batch_executions"] = {str(k): v for k, v in self.batch_executions.items()}
        return d

    @classmethod
    def from_json(cls, model: str, payload: Mapping[str, Any]) -> ModelStatistics:
        """From ``GET /v2/models/<m>/stats`` JSON (HTTP ints or gRPC's int64 strings)."""

        def num(d: Mapping[str, Any] | None, key: str) -> int:
            return int((d or {}).get(key, 0) or 0)

        totals: dict[str, int] = {}
        batches: dict[int, int] = {}
        for entry in payload.get("model_stats", []):
            stats = entry.get("inference_stats", {})
            for key in ("success", "fail", "queue", "compute_input", "compute_infer"):
                totals[f"{key}_count"] = totals.get(f"{key}_count", 0) + num(
                    stats.get(key), "count"
                )
                totals[f"{key}_ns"] = totals.get(f"{key}_ns", 0) + num(stats.get(key), "ns")
            totals["compute_output_ns"] = totals.get("compute_output_ns", 0) + num(
                stats.get("compute_output"), "ns"
            )
            totals["inference_count"] = totals.get("inference_count", 0) + num(
                entry, "inference_count"
            )
            totals["execution_count"] = totals.get("execution_count", 0) + num(
                entry, "execution_count"
            )
            for b in entry.get("batch_stats", []):
                size = int(b["batch_size"])
                batches[size] = batches.get(size, 0) + num(b.get("compute_infer"), "count")
        return cls(
            model=model,
            success_count=totals.get("success_count", 0),
            success_ns=totals.get("success_ns", 0),
            fail_count=totals.get("fail_count", 0),
            queue_ns=totals.get("queue_ns", 0),
            compute_input_ns=totals.get("compute_input_ns", 0),
            compute_infer_ns=totals.get("compute_infer_ns", 0),
            compute_output_ns=totals.get("compute_output_ns", 0),
            inference_count=totals.get("inference_count", 0),
            execution_count=totals.get("execution_count", 0),
            batch_executions=dict(sorted(batches.items())),
        )


def parse_url(url: str, protocol: Protocol | None = None) -> tuple[str, Protocol]:
    """``("host:port", protocol)`` from ``http://host:port``, ``grpc://host:port`` or
    ``host:port``. The scheme decides the protocol unless ``protocol`` is given; they must
    agree. Without either, gRPC."""
    text = url.strip().rstrip("/")
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    scheme = scheme.lower()
    if scheme in ("https", "grpcs"):
        raise ServingError(f"{url}: TLS is not supported; use a plain http:// or grpc:// URL")
    if scheme not in ("", "http", "grpc"):
        raise ServingError(
            f"{url}: unknown scheme '{scheme}'; use http://HOST:PORT or grpc://HOST:PORT"
        )
    if protocol is not None and protocol not in ("grpc", "http"):
        raise ServingError(f"unknown protocol '{protocol}'; use 'grpc' or 'http'")
    if scheme and protocol and scheme != protocol:
        raise ServingError(f"{url} is a {scheme} URL but protocol '{protocol}' was asked for")
    chosen: Protocol = protocol or ("http" if scheme == "http" else "grpc")
    if not rest or "/" in rest or ":" not in rest:
        raise ServingError(f"{url}: expected HOST:PORT (e.g. 127.0.0.1:8001)")
    return rest, chosen


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line, without Triton's multi-sentence NOTE."""
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    text = " ".join(str(text or "").split()).split(" NOTE: ")[0]
    return text or type(exc).__name__


#: Packages whose own failures are transport or protocol errors (no common base class).
_TRANSPORT_PACKAGES = ("gevent", "geventhttpclient", "grpc")
#: Built-in exception types those packages raise for a failed connection (e.g.
#: ``RuntimeError("Cannot resolve HOST:PORT")``); other built-ins there stay bugs.
_TRANSPORT_BUILTINS = (RuntimeError, EOFError)


def _package_of(module: str) -> str:
    return module.split(".")[0]


def _from_transport(exc: BaseException) -> bool:
    """True for an exception of a transport library, or a plain ``RuntimeError`` (etc.) raised
    inside one. ``TypeError``, ``AttributeError`` and the like stay bugs wherever raised."""
    if _package_of(type(exc).__module__) in _TRANSPORT_PACKAGES:
        return True
    if not isinstance(exc, _TRANSPORT_BUILTINS):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return _package_of(module) in _TRANSPORT_PACKAGES


def _ints(node: Any, key: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _ints(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_ints(v, key) for v in node]
    if key in _INT_KEYS and isinstance(node, str) and node.lstrip("-").isdigit():
        return int(node)
    return node


class TritonClient:
    """Client of one Triton server.

    Args:
        url: ``grpc://HOST:PORT``, ``http://HOST:PORT`` or ``HOST:PORT``.
        protocol: ``"grpc"`` or ``"http"``; default from the URL's scheme, else gRPC.
        timeout: seconds for each call (connection and response).
        input_name, output_name: tensor names of the served models.
    """

    def __init__(
        self,
        url: str,
        protocol: Protocol | None = None,
        *,
        timeout: float = 60.0,
        input_name: str = "INPUT",
        output_name: str = "OUTPUT",
    ) -> None:
        self.address, self.protocol = parse_url(url, protocol)
        self.url = f"{self.protocol}://{self.address}"
        self.timeout = float(timeout)
        self.input_name = input_name
        self.output_name = output_name
        if self.protocol == "grpc":
            import tritonclient.grpc as tc

            self._client: Any = tc.InferenceServerClient(self.address)
        else:
            import tritonclient.http as tc

            self._client = tc.InferenceServerClient(
                self.address,
                connection_timeout=min(self.timeout, 10.0),
                network_timeout=self.timeout,
            )
        self._tc = tc
        self._output = tc.InferRequestedOutput(output_name, **self._binary())

    def _binary(self) -> dict[str, bool]:
        return {"binary_data": True} if self.protocol == "http" else {}

    def _call(self, what: str, fn: Callable[[], T], model: str | None = None) -> T:
        from tritonclient.utils import InferenceServerException

        if self._client is None:
            raise ServingError(f"the client of {self.url} is closed")
        try:
            return fn()
        except InferenceServerException as exc:
            text = _one_line(exc)
            status = str(exc.status() or "")
            low = text.lower()
            if "UNAVAILABLE" in status and "failed to connect" in low and "socket closed" in low:
                raise self._wrong_protocol(text) from None  # TCP accepted, no gRPC spoken
            if "UNAVAILABLE" in status and ("connect" in low or "resolving" in low):
                raise self._unreachable(text) from None
            where = f"model '{model}' at {self.url}" if model else self.url
            raise ServingError(f"{what} failed for {where}: {text}") from None
        except http.client.HTTPException as exc:  # geventhttpclient's HTTPParseError & co.
            if type(exc).__name__ == "HTTPConnectionClosed":
                raise self._unreachable(f"the connection was closed: {_one_line(exc)}") from None
            # HTTPParseError's args are (message, offset): keep the message
            text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else _one_line(exc)
            raise self._wrong_protocol(text) from None
        except (OSError, TimeoutError) as exc:
            raise self._unreachable(_one_line(exc)) from None
        except Exception as exc:
            if _from_transport(exc):
                raise self._unreachable(_one_line(exc)) from None
            raise  # a bug in this code or a wrong call: keep its traceback

    def _unreachable(self, text: str) -> ServingError:
        return ServingError(
            f"cannot reach the Triton server at {self.url} ({text}); is it running? "
            "start one with 'stainbench serve' or check --url"
        )

    def _wrong_protocol(self, text: str) -> WrongProtocolError:
        """The peer answered, but not in this client's protocol: the other port, likely."""
        if self.protocol == "http":
            return WrongProtocolError(
                f"the server at {self.url} does not speak HTTP ({text}); is it the gRPC port? "
                f"use grpc://{self.address}, or the HTTP port (default 8000)"
            )
        return WrongProtocolError(
            f"the server at {self.url} closed the gRPC connection ({text}); is it the HTTP "
            f"port? use http://{self.address}, or the gRPC port (default 8001)"
        )

    # --------------------------------------------------------------------------- queries
    def is_live(self) -> bool:
        """True when the server answers its liveness endpoint (False when unreachable).

        Raises :class:`WrongProtocolError` when something answers on the port but not in this
        client's protocol (an HTTP URL on the gRPC port or the reverse): that is a wrong URL,
        not a server that is down, and its message says which URL to use.
        """
        try:
            return bool(self._call("liveness check", lambda: self._client.is_server_live()))
        except WrongProtocolError:
            raise
        except ServingError:
            return False

    def models(self) -> list[ModelInfo]:
        """The repository index: every model the server knows, with its state."""
        if self.protocol == "grpc":
            raw = self._call(
                "listing models",
                lambda: self._client.get_model_repository_index(as_json=True),
            ).get("models", [])
        else:
            raw = self._call("listing models", lambda: self._client.get_model_repository_index())
        infos = [
            ModelInfo(
                name=m["name"],
                version=str(m.get("version", "")),
                state=m.get("state", ""),
                reason=m.get("reason", ""),
            )
            for m in raw
        ]
        return sorted(infos, key=lambda m: (m.name, m.version))

    def is_ready(self, model: str) -> bool:
        """True when ``model`` is loaded and ready (False for unknown models)."""
        return bool(
            self._call("readiness check", lambda: self._client.is_model_ready(model), model)
        )

    def require_ready(self, model: str) -> None:
        """:class:`ServingError` naming the model's state and the ready models, unless ready."""
        if self.is_ready(model):
            return
        infos = self.models()
        known = {m.name: m for m in infos}
        ready = ", ".join(m.name for m in infos if m.state == "READY") or "none"
        if model not in known:
            raise ServingError(f"model '{model}' is unknown to {self.url} (ready models: {ready})")
        info = known[model]
        why = f": {info.reason}" if info.reason else ""
        raise ServingError(
            f"model '{model}' at {self.url} is not ready ({info.state or 'not loaded'}{why}); "
            f"ready models: {ready}"
        )

    def config(self, model: str) -> dict[str, Any]:
        """The model's configuration as JSON (``GET /v2/models/<m>/config``, ints as ints)."""
        if self.protocol == "grpc":
            raw = self._call(
                "reading the config",
                lambda: self._client.get_model_config(model, as_json=True),
                model,
            )
            return _ints(raw.get("config", raw))
        return _ints(
            self._call("reading the config", lambda: self._client.get_model_config(model), model)
        )

    def statistics(self, model: str) -> ModelStatistics:
        """Cumulative server-side statistics of ``model`` (see :class:`ModelStatistics`)."""
        if self.protocol == "grpc":
            raw = self._call(
                "reading statistics",
                lambda: self._client.get_inference_statistics(model, as_json=True),
                model,
            )
        else:
            raw = self._call(
                "reading statistics", lambda: self._client.get_inference_statistics(model), model
            )
        return ModelStatistics.from_json(model, raw)

    # ------------------------------------------------------------------------- inference
    def make_inputs(self, tiles: np.ndarray) -> list[Any]:
        """The request's input tensors for ``tiles`` (checked; reuse them to time requests)."""
        if not isinstance(tiles, np.ndarray):
            raise ServingError(f"tiles must be a numpy array, got {type(tiles).__name__}")
        if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3 or not tiles.shape[0]:
            raise ServingError(
                f"tiles must be uint8 RGB of shape (B, H, W, 3) with B >= 1, "
                f"got {tiles.dtype} {tuple(tiles.shape)}"
            )
        tiles = np.ascontiguousarray(tiles)
        tensor = self._tc.InferInput(self.input_name, list(tiles.shape), "UINT8")
        tensor.set_data_from_numpy(tiles, **self._binary())
        return [tensor]

    def infer_inputs(self, model: str, inputs: list[Any], batch: int) -> np.ndarray:
        """Send prepared ``inputs`` (from :meth:`make_inputs`) and return the uint8 output."""
        kwargs: dict[str, Any] = {"outputs": [self._output]}
        if self.protocol == "http":
            kwargs["headers"] = {"Accept-Encoding": "identity"}
        else:
            kwargs["client_timeout"] = self.timeout
        result = self._call("inference", lambda: self._client.infer(model, inputs, **kwargs), model)
        out = result.as_numpy(self.output_name)
        if out is None or out.dtype != np.uint8 or out.ndim != 4 or out.shape[0] != batch:
            got = "nothing" if out is None else f"{out.dtype} {tuple(out.shape)}"
            raise ServingError(
                f"model '{model}' at {self.url} returned {got} for '{self.output_name}'; "
                f"expected uint8 ({batch}, H, W, 3)"
            )
        return out

    def infer(self, model: str, tiles: np.ndarray) -> np.ndarray:
        """Run ``model`` on uint8 RGB ``tiles`` ``(B, H, W, 3)``; returns uint8 ``(B, H, W, 3)``."""
        return self.infer_inputs(model, self.make_inputs(tiles), int(tiles.shape[0]))

    # -------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Close the connection (idempotent)."""
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a broken connection must not raise
                client.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TritonClient({self.url!r})"
