"""Tiny python-backend models for smoke tests of a Triton server (no ONNX needed).

:func:`write_numpy_model` writes ``<repo>/<name>/config.pbtxt`` (a ``ModelConfig`` message
printed with ``text_format``) and ``<repo>/<name>/1/model.py``, following the served-model
contract (``INPUT``/``OUTPUT`` uint8 ``[-1, -1, 3]``, ``max_batch_size > 0``). The model applies
one of a few fixed uint8 maps and can sleep a fixed time per execution, which gives a server
whose compute time is known: useful to test latency measurement against the real server.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

#: The maps a test model can apply to a uint8 batch ``x`` of shape ``(B, H, W, 3)``.
OPERATIONS = {
    "invert": "255 - x",
    "identity": "x.copy()",
    "fail": "raise_error()",
}

_MODEL_PY = '''"""Test model by stainbench.serving.testing: {op}, {delay_ms} ms per execution."""

import time

import numpy as np
import triton_python_backend_utils as pb_utils


def raise_error():
    raise pb_utils.TritonModelException("this test model rejects every request")


class TritonPythonModel:
    def initialize(self, args):
{init}
    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy() for r in requests]
        sizes = [x.shape[0] for x in xs]
        shapes = {{x.shape[1:] for x in xs}}
        responses = []
        if {delay_ms} > 0:
            time.sleep({delay_ms} / 1000.0)
        if len(shapes) == 1:
            x = np.concatenate(xs)
            y = {expr}
            start = 0
            for n in sizes:
                out = pb_utils.Tensor("OUTPUT", np.ascontiguousarray(y[start : start + n]))
                responses.append(pb_utils.InferenceResponse([out]))
                start += n
            return responses
        for x in xs:
            y = {expr}
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", y)]))
        return responses
'''


def write_numpy_model(
    repo: str | Path,
    name: str = "invert",
    op: str = "invert",
    *,
    delay_ms: float = 0.0,
    max_batch_size: int = 8,
    queue_delay_us: int = 0,
    instances: int = 1,
    broken: bool = False,
    load_delay_s: float = 0.0,
) -> Path:
    """Write a python-backend model into ``repo``; returns its folder.

    Args:
        op: ``"invert"`` (``255 - x``), ``"identity"`` or ``"fail"`` (every request errors).
        delay_ms: sleep per execution (one dynamic batch), milliseconds.
        max_batch_size: Triton's ``max_batch_size`` (> 0).
        queue_delay_us: dynamic batcher's ``max_queue_delay_microseconds``.
        instances: ``KIND_CPU`` instance count (one stub process each).
        broken: write a ``model.py`` whose ``initialize`` raises, so loading the model fails.
        load_delay_s: sleep in ``initialize`` (a slowly loading model), seconds.
    """
    from tritonclient.grpc import model_config_pb2 as mc

    if op not in OPERATIONS:
        raise ValueError(f"unknown op {op!r}; choose one of {sorted(OPERATIONS)}")
    model_dir = Path(repo) / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    for tensor, target in (("INPUT", config.input), ("OUTPUT", config.output)):
        target.add(name=tensor, data_type=mc.TYPE_UINT8, dims=[-1, -1, 3])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=instances)
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    init = f"        time.sleep({float(load_delay_s)})\n"
    if broken:
        init = '        raise RuntimeError("this test model is broken on purpose")\n'
    code = _MODEL_PY.format(op=op, delay_ms=float(delay_ms), expr=OPERATIONS[op], init=init)
    (model_dir / "1" / "model.py").write_text(code)
    return model_dir
