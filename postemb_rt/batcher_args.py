"""What the dynamic batcher accepts, checked up front: its options (``check_options``), a request's
``timeout`` (``check_timeout``) and, on the path without the extension only, a request's token ids
(``token_rows``). Messages name the argument, the value given and the fix.

The C++ batcher checks token ids in csrc/bindings.cpp ``rows_from_python``, in the pass that
converts them (with the GIL held, so it costs nothing extra); ``token_rows`` is the same rule, with
the same messages, for ``SerialCore``, which has no C++ (as it mirrors every other check of
``submit``).
"""
from __future__ import annotations

import numbers

from .errors import ValidationError

OPTION_MAX = 2**40  # larger options would overflow the scheduler's int64 token sums and nanosecond clocks
ANY_ID = 2**63  # without a vocabulary size: ids from 0 to int64's largest
IDS_FIX = ("Fix: pass a list of token-id lists (one list of int per post), e.g. Encoder.tokenizer(texts).ids, "
           "or embed texts with Encoder.submit(texts).")
_LOWEST = {"max_batch_tokens": 1, "max_batch_size": 1, "max_wait_us": 0, "max_queued_tokens": 1,
           "batch_overhead_tokens": 0, "pad_id": 0}


def check_options(embed, options: dict) -> None:
    """``DynamicBatcher``'s arguments: ``embed`` callable (TypeError), each of ``_LOWEST``'s options an
    int (not bool) from its lowest value to ``OPTION_MAX``, ``vocab_size`` None or such an int >= 1,
    ``pad_id`` below it (ValidationError)."""
    if not callable(embed):
        raise TypeError("`embed` must be callable: embed(input_ids, attention_mask) -> float32 (B, D). Given: "
                        f"{type(embed).__name__}. Fix: pass a backend's embed, e.g. encoder.backend.embed.")
    vocab = options.get("vocab_size")
    for name, lo in (*_LOWEST.items(), ("vocab_size", 1)):
        value = options.get(name)
        if name == "vocab_size" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= OPTION_MAX:
            what = f"{value!r}" if isinstance(value, int) and not isinstance(value, bool) else \
                f"{value!r} ({type(value).__name__})"
            none = " or None (any id >= 0)" if name == "vocab_size" else ""
            raise ValidationError(f"`{name}` must be an int from {lo} to 2**40{none}. Given: {what}. "
                                  f"Fix: pass such an int, or leave `{name}` out for its default.")
    pad = options.get("pad_id", 0)
    if vocab is not None and pad >= vocab:
        raise ValidationError(f"`pad_id` must be a token id of this model (0..{vocab - 1}). Given: {pad}. "
                              "Fix: the tokenizer's pad id (Encoder.tokenizer.pad_id).")


def check_timeout(timeout) -> float:
    """``timeout``: seconds > 0, or None for no deadline. Returns it as the batcher cores take it
    (float seconds; 0.0: no deadline). Refuses 0, negative, NaN and non-numbers (ValidationError)."""
    if timeout is None:
        return 0.0
    number = isinstance(timeout, numbers.Real) and not isinstance(timeout, bool)
    if number and timeout > 0:
        return float(timeout)
    given = repr(timeout) if number else f"{timeout!r} ({type(timeout).__name__})"
    raise ValidationError(f"`timeout` must be a number of seconds > 0, or None for no deadline. Given: {given}. "
                          "Fix: e.g. timeout=5.0; timeout=None waits as long as the queue takes.")


def _sequence(x) -> bool:
    """As C's PySequence_Check (what rows_from_python asks), and not text."""
    return hasattr(type(x), "__getitem__") and not isinstance(x, (dict, str, bytes, bytearray))


def _bad_id(x, where: str, hi: int) -> Exception:
    """The error for a token id that is not an int, or not in [0, hi): rows_from_python's messages."""
    if isinstance(x, (bool, float)) or not hasattr(type(x), "__index__"):
        return TypeError(f"{where} must be an int token id. Given: {type(x).__name__} ({x!r}). {IDS_FIX}")
    vocab = " (ids are >= 0 and below 2**63)" if hi == ANY_ID else f" of this model (0..{hi - 1})"
    return ValueError(f"{where} is {x!r}, not a token id{vocab}. "
                      "Fix: pass ids from the model's own tokenizer (Encoder.tokenizer(texts).ids).")


def token_rows(posts, vocab_size: int = 0) -> list[list[int]]:
    """``posts`` (a sequence, not a str, of sequences of int token ids) as lists of int, each id in
    [0, vocab_size) (vocab_size 0: [0, 2**63)). TypeError for a wrong type, ValueError for an id out of
    range, naming ``posts[i][j]``. For SerialCore; the C++ batcher runs csrc/bindings.cpp's twin."""
    hi = vocab_size or ANY_ID
    if not _sequence(posts):
        raise TypeError(f"`posts` must be a list of token-id lists. Given: {type(posts).__name__}. {IDS_FIX}")
    rows = []
    for i, p in enumerate(posts):
        if not _sequence(p):
            raise TypeError(f"`posts[{i}]` must be a sequence of int token ids. Given: {type(p).__name__}. {IDS_FIX}")
        row = list(p)
        for j, x in enumerate(row):
            if type(x) is not int:
                if isinstance(x, (bool, float)) or not hasattr(type(x), "__index__"):
                    raise _bad_id(x, f"`posts[{i}][{j}]`", hi)
                row[j] = x.__index__()
        if row and (min(row) < 0 or max(row) >= hi):
            j = next(j for j, x in enumerate(row) if not 0 <= x < hi)
            raise _bad_id(row[j], f"`posts[{i}][{j}]`", hi)
        rows.append(row)
    return rows
