"""Export: checkpoints in, a Triton model repository out.

- :mod:`stainbench.export.triton`: ``config.pbtxt`` from the ``ModelConfig`` message, model
  versions (:func:`~stainbench.export.triton.write_model`, ``list_models``);
- :mod:`stainbench.export.onnx`: the uint8-in/uint8-out tile graph and ``OnnxTileModel``;
- :mod:`stainbench.export.parity`: the parity gate;
- :mod:`stainbench.export.tensorrt`: TensorRT engines (optional, GPU machines);
- :mod:`stainbench.export.exporter`: :func:`~stainbench.export.exporter.export_checkpoint`;
- :mod:`stainbench.export.profile`: typed export profiles (``export/*.yaml``);
- ``triton_model.py``: the python-backend ``model.py`` copied into every version directory.

Submodules are imported on use (torch and onnx are heavy).
"""
