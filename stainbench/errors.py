"""The library's exceptions.

Every error a user can cause (bad input, a wrong config, a missing model, a server that is
down) is a :class:`StainbenchError`. The CLI turns it into one red line and exit code 1;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class StainbenchError(Exception):
    """Base class: a problem the user can fix. The message is one line and says what to do."""


class ConfigError(StainbenchError):
    """A recipe, profile or option is invalid (unknown key, wrong type, out-of-range value)."""


class DataError(StainbenchError):
    """Input data is missing, unreadable, corrupt, or of the wrong shape or dtype."""


class ModelError(StainbenchError):
    """An unknown architecture, or a checkpoint that is not ours, corrupt or incompatible."""


class TrainingError(StainbenchError):
    """Training cannot go on: a non-finite loss, an interruption, an incompatible resume."""


class ExportError(StainbenchError):
    """Export failed: ONNX/TensorRT conversion, a failed parity gate, a repository conflict."""


class ServingError(StainbenchError):
    """The Triton server cannot be started or reached, or a model is not ready."""


class BenchmarkError(StainbenchError):
    """A comparison or load test cannot run with what it was given."""
