"""The errors of the inference engine; each message names the bad value and the limit."""


class InferenceError(Exception):
    """Base of every error raised by :mod:`dropbear.inference`."""


class BadInput(InferenceError, ValueError):
    """A model input or batch the model cannot take: shape, dtype, non-finite, size."""


class QueueFull(InferenceError):
    """The executor's queue holds its limit of waiting inputs; the input is refused."""


class Skipped(InferenceError):
    """An input its submitter no longer wanted when its batch formed; it was not run."""


class ExecutorClosed(InferenceError):
    """The executor is not serving (not started yet, or stopped)."""


class UnknownModel(InferenceError, LookupError):
    """No such model name or version in the repository (or staged in the executor)."""


class BadConfig(InferenceError, ValueError):
    """A ``config.toml`` (or architecture options) that does not describe a usable model."""


class CorruptModel(InferenceError):
    """Parameter bytes that do not decode, do not fit the architecture or whose SHA-256 is not
    the version they are stored under."""
