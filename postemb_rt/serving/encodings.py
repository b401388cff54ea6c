"""The ``encoding`` of ``/embed_full``: HTTP names for ``postemb_rt.quantization``'s precisions.

The quantization is ``Encoder.encode(precision=...)``'s (``postemb_rt.quantization``:
sentence-transformers' ``quantize_embeddings``), with the model's calibration ranges
(``quantization.ranges_for(encoder, truncate_dim, normalize=True)`` at the model's default dim, computed
once per model when the server loads it, cached on disk; another ``dimensions``: that prefix's own ranges,
``Runtime.ranges_at``), so an int8 answer equals ``Encoder.encode(texts, precision="int8")``.
``binary`` keeps its HTTP meaning (packed sign bits as unsigned bytes 0..255, first component in
the high bit), which is sentence-transformers' ``ubinary`` (its ``binary`` is those bytes minus
128); ``ubinary`` is accepted as well. All need ``normalize: true``.
"""
from __future__ import annotations

import numpy as np

from .. import quantization

# HTTP `encoding` -> quantization precision
PRECISION = {"float32": "float32", "int8": "int8", "uint8": "uint8", "binary": "ubinary", "ubinary": "ubinary"}
ENCODINGS = tuple(PRECISION)


def quantize(vecs: np.ndarray, encoding: str, ranges: np.ndarray | None) -> np.ndarray:
    """float32 (n, dim) unit rows -> the ``encoding``'s array (see the module docstring)."""
    return quantization.quantize(vecs, PRECISION[encoding], ranges)


def describe(dim: int, ranges: np.ndarray | None) -> dict:
    """``/info``'s ``encodings``: what each ``encoding`` of /embed_full returns."""
    calibrated = {"ranges": None if ranges is None else ranges.tolist(),
                  "calibration": "per-dimension [min; max] of the model's unit vectors on the built-in posts "
                                 "(postemb_rt.quantization.ranges_for), fixed per model",
                  "step": "(max - min) / 255"}
    packed = {"precision": "ubinary", "bytes_per_row": (dim + 7) // 8, "bit_order": "big"}
    return {"float32": {},
            "int8": {"precision": "int8", "formula": "q = clip(floor((x - min) / step), 0, 255) - 128", **calibrated},
            "uint8": {"precision": "uint8", "formula": "q = clip(floor((x - min) / step), 0, 255)", **calibrated},
            "binary": packed, "ubinary": packed}
