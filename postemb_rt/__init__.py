"""postemb_rt: an optimized inference runtime for post embeddings.

    from postemb_rt import Encoder
    enc = Encoder.from_pretrained("default")
    vectors = enc.encode(["a post", "another post"])   # float32 (2, enc.dim), unit L2 norm

Importing the package is light: torch, onnxruntime and triton load only inside the
backend or kernel that needs them.
"""
from .encoder import Encoder
from .errors import (
    BackendUnavailableError,
    EngineMismatchError,
    FidelityError,
    ModelNotFoundError,
    OverloadedError,
    PostEmbError,
    ValidationError,
)

__version__ = "0.1.0"
__all__ = [
    "Encoder",
    "PostEmbError",
    "ValidationError",
    "ModelNotFoundError",
    "BackendUnavailableError",
    "OverloadedError",
    "EngineMismatchError",
    "FidelityError",
]
