"""Quantized outputs: sentence-transformers' ``precision`` of ``encode`` (not the compute precision).

Two different things are called precision:

- ``Encoder.from_pretrained(precision=...)``: the **compute** precision ("fp32", "fp16",
  "bf16", "int8"), how the model runs; the output is float32 either way.
- ``Encoder.encode(precision=...)``: the **output** precision, as in
  ``SentenceTransformer.encode``: "float32" (default), "int8", "uint8" (scalar quantization,
  one byte per dimension), "binary", "ubinary" (one bit per dimension, 8 per byte).

The quantization itself is ``sentence_transformers.quantize_embeddings`` (one implementation;
it needs ``pip install sentence-transformers``, e.g. the ``train`` extra), applied to the
float32 vectors ``encode`` would return (normalised, truncated as asked):

- int8 / uint8: per dimension, ``q = clip(floor((x - min) / ((max - min) / 255)), 0, 255)``
  (minus 128 for int8) with ``ranges = [min; max]`` (float32 (2, dim)). sentence-transformers
  computes the ranges from the batch being quantized unless given; that makes a vector depend
  on its neighbours in the call. Here the ranges are computed **once per model** (and per
  truncate_dim, normalisation and compute precision) from the built-in posts
  (``postemb_rt.data.BUILTIN_POSTS``) embedded with the model's default prompt, and stored in the
  cache (``POSTEMB_CACHE``, default ``~/.cache/postemb_rt/quantization/``), so the same text always
  gives the same bytes, whatever it is batched with, and vectors from every prompt share one
  scale (quantized queries and documents stay comparable). ``ranges_for(encoder)`` returns them.
- binary / ubinary: ``x > 0``, packed 8 per byte, first dimension in the high bit
  (``numpy.packbits``): (n, ceil(dim / 8)); "binary" stores each byte minus 128 as int8.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import numpy as np

from .errors import BackendUnavailableError, ValidationError

log = logging.getLogger("postemb_rt")
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
_COMPUTE = ("fp32", "fp16", "bf16")  # from_pretrained's: refused here with a pointer there
_RANGES: dict[str, np.ndarray] = {}  # cache key -> ranges, per process
_LOCK = threading.Lock()


def check_precision(precision) -> str:
    """``precision`` if it is one of PRECISIONS, else ValidationError (naming the compute precision
    of from_pretrained when that is what was meant)."""
    if precision in PRECISIONS:
        return precision
    hint = (f" {precision!r} is a compute precision: Encoder.from_pretrained(..., precision={precision!r})."
            if precision in _COMPUTE else "")
    raise ValidationError(
        f"`precision` of encode() is the output quantization, as in sentence-transformers: one of {PRECISIONS}. "
        f"Given: {precision!r}.{hint} Fix: pass one of those, or set the compute precision at load.")


def quantize(vectors: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """float32 (n, dim) -> the ``precision`` encoding (see the module docstring): float32 (n, dim)
    unchanged, int8 / uint8 (n, dim), binary int8 / ubinary uint8 (n, ceil(dim / 8)). int8 and
    uint8 need ``ranges`` (float32 (2, dim): per-dimension min and max; ``ranges_for``)."""
    check_precision(precision)
    if precision == "float32":
        return vectors
    if precision in ("int8", "uint8"):
        if ranges is None or np.shape(ranges) != (2, vectors.shape[-1]):
            raise ValidationError(
                f"`ranges` for {precision} must be float32 (2, {vectors.shape[-1]}): per-dimension min and max. "
                f"Given: {None if ranges is None else np.shape(ranges)}. Fix: quantization.ranges_for(encoder).")
    try:
        try:
            from sentence_transformers import quantize_embeddings
        except ImportError:  # sentence-transformers < 5 exports it from its quantization module only
            from sentence_transformers.quantization import quantize_embeddings
    except ImportError:
        raise BackendUnavailableError(
            f"`precision` {precision!r} quantizes through sentence_transformers.quantize_embeddings, which is "
            "not installed. Fix: pip install sentence-transformers (or postemb_rt[serve] or [train]).") from None
    if len(vectors) == 0:  # quantize_embeddings wants rows; the empty shape is known
        width = vectors.shape[-1] if precision.endswith("int8") else -(-vectors.shape[-1] // 8)
        return np.zeros((0, width), dtype=np.int8 if precision in ("int8", "binary") else np.uint8)
    return quantize_embeddings(vectors, precision=precision, ranges=ranges)


def ranges_for(encoder, truncate_dim: int | None = None, normalize: bool | None = None) -> np.ndarray:
    """float32 (2, dim): the int8/uint8 calibration ranges of ``encoder``'s vectors at this
    ``truncate_dim`` (default: full) and normalisation (default: the model's), computed once from
    the built-in posts and cached on disk (see the module docstring)."""
    from .data import BUILTIN_POSTS
    from .fidelity import texts_key
    from .onnx_export import cache_root

    k = encoder.dim if truncate_dim is None else truncate_dim
    norm = encoder.model.config.normalize if normalize is None else bool(normalize)
    key = (f"{encoder.model_version}-{encoder.model.fingerprint}-{encoder.backend.precision}-"
           f"max_length{encoder.max_length}-dim{k}-normalize{norm}-{texts_key(BUILTIN_POSTS)}")
    with _LOCK:
        if key in _RANGES:
            return _RANGES[key]
    path = Path(cache_root()) / "quantization" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
    from .durable import read_sealed, write_sealed

    stored, why = read_sealed(path, key, "calibration")  # sealed: an edited or moved entry is not used
    ranges = _checked_ranges(stored, k)
    if ranges is None:
        if path.exists():
            log.warning("quantization cache entry %s is not trusted (%s); computing the ranges again", path,
                        why or "its ranges are not (2, dim) finite min <= max")
        log.info("computing int8 quantization ranges of %s (dim %d) on %d built-in posts (once; cached in %s)",
                 encoder.model_version, k, len(BUILTIN_POSTS), path.parent)
        vecs = encoder.encode(BUILTIN_POSTS, normalize=norm, truncate_dim=k, long_posts="truncate")
        ranges = np.vstack([vecs.min(axis=0), vecs.max(axis=0)]).astype(np.float32)
        write_sealed(path, key, "calibration", {"ranges": ranges.tolist(), "posts": len(BUILTIN_POSTS),
                                                "source": "postemb_rt.data.BUILTIN_POSTS"})
    with _LOCK:
        _RANGES[key] = ranges
    return ranges


def _checked_ranges(stored, k: int) -> np.ndarray | None:
    """float32 (2, k) ranges of a verified cache entry's content if they are finite with min <= max."""
    if not isinstance(stored, dict) or np.shape(stored.get("ranges")) != (2, k):
        return None
    try:
        ranges = np.asarray(stored["ranges"], dtype=np.float32)
    except (TypeError, ValueError):
        return None
    return ranges if np.isfinite(ranges).all() and (ranges[0] <= ranges[1]).all() else None
