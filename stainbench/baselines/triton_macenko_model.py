"""Triton python-backend model serving Macenko stain normalization with numpy.

``stainbench export --baselines`` copies this file as ``<repo>/macenko/<version>/model.py``,
next to ``macenko_impl.py`` (a copy of ``stainbench/baselines/macenko.py``) and
``macenko_target.json`` (the fitted target). It needs numpy only.

Contract: ``INPUT`` uint8 ``(B, H, W, 3)`` RGB -> ``OUTPUT`` uint8 ``(B, H, W, 3)``; each tile
is normalized on its own (stain vectors are estimated per tile, so batching cannot change a
result). A request with a wrong dtype or shape gets its own clear error.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        cfg = json.loads(args["model_config"])
        self.name = cfg["name"]
        vdir = os.path.join(args["model_repository"], args["model_version"])
        spec = importlib.util.spec_from_file_location(
            "stainbench_macenko_impl", os.path.join(vdir, "macenko_impl.py")
        )
        assert spec is not None and spec.loader is not None
        self.impl = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = self.impl  # dataclasses look their module up there
        spec.loader.exec_module(self.impl)
        with open(os.path.join(vdir, "macenko_target.json"), encoding="utf-8") as fh:
            self.target = self.impl.MacenkoTarget.from_dict(json.load(fh))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "INPUT")
            x = None if tensor is None else tensor.as_numpy()
            if x is None or x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
                got = "nothing" if x is None else f"{x.dtype} {list(x.shape)}"
                err = pb_utils.TritonError(
                    f"{self.name}: INPUT must be uint8 (batch, height, width, 3), got {got}"
                )
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
                continue
            y = self.impl.macenko_transfer(x, self.target)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", y)]))
        return responses
