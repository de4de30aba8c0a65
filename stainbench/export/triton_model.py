"""Triton python-backend model that serves an exported ``model.onnx`` with ONNX Runtime.

``stainbench export`` copies this file as ``<repo>/<model>/<version>/model.py``; it runs inside
Triton's python-backend stub process, one process (and one ONNX Runtime session) per model
instance. It imports only numpy and onnxruntime, so the repository works without stainbench.

Contract (docs/CONTRACTS.md section 3): input ``INPUT`` uint8 ``(B, H, W, 3)`` RGB, output
``OUTPUT`` uint8 ``(B, H, W, 3)``; H and W must be multiples of the config parameter
``stainbench.size_multiple``. Requests of one dynamic batch that share a tile size are run as
one ``session.run``; a request with a wrong shape or dtype gets its own clear error and does
not fail the others.

Threads: ``stainbench.intra_op_threads`` from the config, or (when 0) the usable cores divided
by the number of instances, at least 1. Idle threads do not spin
(``session.intra_op.allow_spinning = 0``), so they do not steal cores from the server.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _param(cfg: dict[str, Any], key: str, default: str) -> str:
    value = cfg.get("parameters", {}).get(key, {}).get("string_value", "")
    return value if value != "" else default


class TritonPythonModel:
    """One instance: one ONNX Runtime session on this version's ``model.onnx``."""

    def initialize(self, args: dict[str, str]) -> None:
        cfg = json.loads(args["model_config"])
        self.name = cfg["name"]
        self.size_multiple = max(1, int(_param(cfg, "stainbench.size_multiple", "1")))
        instances = sum(int(g.get("count", 1)) for g in cfg.get("instance_group", [])) or 1
        threads = int(_param(cfg, "stainbench.intra_op_threads", "0"))
        if threads <= 0:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
            threads = max(1, cores // instances)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        onnx_file = _param(cfg, "stainbench.onnx_file", "model.onnx")
        path = os.path.join(args["model_repository"], args["model_version"], onnx_file)
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.threads = threads

    def _check(self, x: np.ndarray) -> str | None:
        """A one-line error for a tile batch this model cannot serve, else None."""
        if x.dtype != np.uint8:
            return f"{self.name}: INPUT must be uint8, got {x.dtype}"
        if x.ndim != 4 or x.shape[3] != 3:
            return f"{self.name}: INPUT must be (batch, height, width, 3) RGB, got {list(x.shape)}"
        h, w = x.shape[1], x.shape[2]
        m = self.size_multiple
        if h == 0 or w == 0 or h % m or w % m:
            return (
                f"{self.name}: tile height and width must be positive multiples of {m}, got {h}x{w}"
            )
        return None

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answer each request of one dynamic batch (same order)."""
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
        for i, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, "INPUT")
            if tensor is None:
                err = pb_utils.TritonError(f"{self.name}: request has no input named INPUT")
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=err)
                continue
            x = tensor.as_numpy()
            problem = self._check(x)
            if problem is not None:
                err = pb_utils.TritonError(problem)
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=err)
                continue
            groups.setdefault(tuple(x.shape[1:]), []).append((i, x))
        for items in groups.values():
            batch = np.concatenate([x for _, x in items]) if len(items) > 1 else items[0][1]
            try:
                y = self.session.run([self.output_name], {self.input_name: batch})[0]
            except Exception as exc:  # ORT failure: answer each request with the reason
                msg = f"{self.name}: ONNX Runtime failed: {str(exc).splitlines()[0]}"
                for i, _ in items:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(msg)
                    )
                continue
            start = 0
            for i, x in items:
                n = x.shape[0]
                out = pb_utils.Tensor("OUTPUT", np.ascontiguousarray(y[start : start + n]))
                responses[i] = pb_utils.InferenceResponse(output_tensors=[out])
                start += n
        return responses

    def finalize(self) -> None:
        self.session = None
