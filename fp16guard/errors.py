"""One exception tree for problems with what the user gave us.

``UserError`` (and its subclasses) means "the input is wrong": the CLI prints its message on one
line and exits with status 2, and no artifact is left behind. Anything else that escapes is a bug
in fp16guard and keeps its traceback.

Messages follow one shape: what was received, what was expected, and a hint where one helps, e.g.
``calibration shard calib/s0.npz has no input 'x'; the model expects inputs ['x'] (float32, [batch, 32])``.
"""


class UserError(Exception):
    """Base class of every error caused by user input (exit status 2)."""

    exit_code = 2


class ModelError(UserError):
    """The model file is missing, unreadable or not a valid ONNX model."""


class DataError(UserError):
    """Calibration or holdout data is missing, malformed, or does not fit the model."""


class NonFiniteError(DataError):
    """NaN or inf in the input data or in an FP32 activation (names the shard and tensor)."""


class ConfigError(UserError):
    """A parameter is out of range or malformed (threshold, name, version, regex...)."""


class StoreError(UserError):
    """The store refused an operation (escaping path, overwriting a released run...)."""


class VerificationFailed(Exception):
    """The built artifact does not match FP32 within tolerance (exit status 1, not a user error).

    Attributes:
        reason: one line saying which output failed and by how much.
        report: the verification figures (the content of ``verification.json``).
    """

    exit_code = 1

    def __init__(self, reason: str, report: dict | None = None):
        super().__init__(reason)
        self.reason = reason
        self.report = report or {}


class EnvironmentFailure(Exception):
    """The environment failed, not the model or the data (exit status 3).

    A Prefect server that does not start or stops answering, a store that cannot be read or
    written (read-only, disk full, a path that is a file), a lock held by a process that is gone
    and cannot be cleared. The CLI prints the message on one line and exits with status 3, so a
    CI job never reads an infrastructure problem as a rejected model (status 1) or bad input (2).
    """

    exit_code = 3
