"""Typed errors. Messages name the argument, the value given and, where there is one, the fix."""


class PostEmbError(Exception):
    """Base class of every error raised by postemb_rt."""


class ValidationError(PostEmbError, ValueError):
    """A caller passed a value the runtime cannot use (wrong type, out of range)."""


class ModelNotFoundError(PostEmbError, FileNotFoundError):
    """A model name or directory does not resolve to a usable model directory."""


class BackendUnavailableError(PostEmbError, RuntimeError):
    """A backend was asked for by name but cannot load here (missing package or device)."""


class OverloadedError(PostEmbError, RuntimeError):
    """The batcher's queue is full; retry later."""


class EngineMismatchError(PostEmbError, RuntimeError):
    """A compiled artefact (ONNX file, TensorRT engine) does not match the model or runtime."""


class BatcherClosedError(PostEmbError, RuntimeError):
    """``submit`` after the batcher was closed, or a request dropped by ``close(drain=False)``."""


class DeadlineExceededError(PostEmbError, TimeoutError):
    """A request's ``timeout`` passed before it was computed; it was not computed."""


class BatchFailedError(PostEmbError, RuntimeError):
    """The backend failed the batch this request was in (raised when the original exception
    object is not available; normally the backend's own exception is raised)."""


class FidelityError(PostEmbError, RuntimeError):
    """A fast precision's measured fidelity to float32 misses the bar (postemb_rt.fidelity)."""
