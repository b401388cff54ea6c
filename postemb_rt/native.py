"""Access to the native extension ``postemb_rt._C``, with an explicit pure-Python fallback.

Set ``POSTEMB_NATIVE=0`` (or false, no, off) to force the Python paths (for debugging, or to compare). When
the extension is missing the fallback is used with a warning, and
``Encoder.describe()["native"]`` says which ran.
"""
from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger("postemb_rt")

OFF = ("0", "false", "no", "off")  # $POSTEMB_NATIVE values that turn the extension off (any case)


def disabled() -> bool:
    """$POSTEMB_NATIVE asks for the Python paths."""
    return os.environ.get("POSTEMB_NATIVE", "1").strip().lower() in OFF


_C = None
if not disabled():
    try:
        from . import _C  # type: ignore[attr-defined,no-redef]
    except ImportError as exc:  # pragma: no cover - only without a build
        log.warning(
            "postemb_rt._C is not built (%s); using the pure-Python fallbacks. "
            "Fix: pip install -e . (needs a C++17 compiler).",
            exc,
        )

NATIVE = _C is not None


def _pack_padded_py(seqs, pad_id: int = 0, pad_to_multiple: int = 1):
    if len(seqs) == 0:
        raise ValueError("`seqs` must hold at least one row. Given: 0 rows.")
    if pad_to_multiple < 1:  # as csrc/pack.cpp packed_width
        raise ValueError(f"`pad_to_multiple` must be >= 1. Given: {pad_to_multiple}.")
    width = max(len(s) for s in seqs)
    width = -(-width // pad_to_multiple) * pad_to_multiple
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def pack_padded(seqs, pad_id: int = 0, pad_to_multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Ragged token-id rows (B sequences of int) -> (input_ids, attention_mask), int64 (B, L)."""
    if _C is not None:
        return _C.pack_padded(seqs, pad_id, pad_to_multiple)
    return _pack_padded_py(seqs, pad_id, pad_to_multiple)
