"""Typed errors raised by core.

Each carries ``code`` (snake_case, stable, part of the HTTP contract), a message for a person and
``param``: the JSON path of the spec field at fault (``prune.ratio``) or None. The API turns a
``SpecError`` into a 422 and the worker turns any ``LayerPruneError`` into a job's ``error``.
"""

from __future__ import annotations


class LayerPruneError(Exception):
    """Base class: something a user can fix, with a stable code."""

    code = "layerprune_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "param": self.param}


class SpecError(LayerPruneError):
    """A job spec field is invalid (HTTP 422)."""

    code = "invalid_spec"


class ModelSourceError(LayerPruneError):
    """The model cannot be found, fetched or trusted."""

    code = "model_unavailable"


class UnsupportedArchitectureError(ModelSourceError):
    code = "unsupported_architecture"


class RemoteCodeRefusedError(ModelSourceError):
    code = "remote_code_refused"


class PickleOnlyRefusedError(ModelSourceError):
    code = "pickle_weights_refused"


class DatasetError(LayerPruneError):
    """A data set is missing, empty or malformed."""

    code = "invalid_dataset"


class DeviceUnavailableError(LayerPruneError):
    """The job needs hardware this worker does not have (qlora without CUDA)."""

    code = "device_unavailable"


class TrainingDivergedError(LayerPruneError):
    """A NaN or infinite loss stopped fine-tuning."""

    code = "training_diverged"


class Cancelled(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised at a cancel check once the job's cancel flag is seen."""
