"""Post-created events on the ``posts`` stream: ``publish`` (the producer side) and
``parse_event`` (the worker's validation: a malformed event is poison, with a reason)."""
from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import dataclass

from ..errors import ValidationError
from .keys import POSTS_MAXLEN, POSTS_STREAM

MAX_TEXT_BYTES = 32 * 1024  # a post larger than this (UTF-8) is poison, not a post
MAX_POST_ID_BYTES = 256
MAX_PROMPT_NAME_BYTES = 256
# A created_at further ahead of the clock than this is not a clock's skew but another unit
# (milliseconds or microseconds since the epoch): refused by publish, dead-lettered by a worker,
# since it would make every freshness figure meaningless.
MAX_FUTURE_S = 86_400.0
EMPTY_TEXT_REASON = "empty `text`: nothing to embed (the HTTP server refuses an empty input too)"


def _future_problem(created: float, now: float) -> str:
    """Why ``created`` (seconds since the epoch) cannot be a post's creation time, or ""."""
    if created <= now + MAX_FUTURE_S:
        return ""
    unit = next((u for u, f in (("milliseconds", 1e3), ("microseconds", 1e6), ("nanoseconds", 1e9))
                 if abs(created / f - now) <= MAX_FUTURE_S), None)
    return (f"`created_at` {created!r} is {created - now:.3g} s in the future: seconds since the epoch are "
            f"expected{f', this looks like {unit}' if unit else ''}")


def _as_epoch(created_at) -> float:
    if created_at is None:
        return time.time()
    if isinstance(created_at, _dt.datetime):
        if created_at.tzinfo is None:
            raise ValidationError(f"`created_at` must be timezone-aware. Given: {created_at!r}.")
        return created_at.timestamp()
    if isinstance(created_at, bool) or not isinstance(created_at, (int, float)) or not math.isfinite(created_at) \
            or created_at < 0:
        raise ValidationError(f"`created_at` must be seconds since the epoch (float >= 0) or an aware datetime. "
                              f"Given: {created_at!r}.")
    problem = _future_problem(float(created_at), time.time())
    if problem:
        raise ValidationError(f"{problem}. Fix: pass seconds (e.g. time.time(), or milliseconds / 1000), or an "
                              "aware datetime.")
    return float(created_at)


def publish(client, post_id, text: str, created_at=None, *, stream: str = POSTS_STREAM,
            maxlen: int | None = POSTS_MAXLEN, prompt_name: str | None = None) -> bytes:
    """Append a post-created event to the ``posts`` stream; returns its stream id.

    client: a redis-py client (see :func:`connect`).
    post_id: str or int, non-empty, at most 256 UTF-8 bytes.
    text: the post (str, not empty, at most MAX_TEXT_BYTES = 32 KiB as UTF-8; an empty or longer
        post is refused here, and a worker dead-letters any that reach it from other producers).
        Empty means "", as the HTTP server refuses it ([CLS] [SEP] alone is no post's vector);
        whitespace is text to the server and to the worker.
    created_at: seconds since the epoch (float) or an aware datetime; default: now. More than a
        day ahead of this clock is refused (milliseconds, most likely: ``MAX_FUTURE_S``).
    prompt_name: a prompt of the worker's model (its ``prompts``, e.g. "query" / "document")
        to embed this post with; None: the worker's ``--prompt-name`` (default: the model's
        default prompt, if any). A name the model lacks is dead-lettered by the worker with
        a reason listing the model's prompts.
    Event fields: ``post_id``, ``text`` (UTF-8), ``created_at`` ("%.6f"), and ``prompt_name``
    when given.

    maxlen policy: each XADD trims the stream approximately (``MAXLEN ~ maxlen``, whole
    macro-nodes, O(1) amortised) to bound Redis memory. Trimming ignores consumer groups,
    so an event trimmed before any worker read it is lost: size ``maxlen`` above the
    peak rate times the longest backlog you will tolerate (default 1,000,000 = ~1.4 h at
    200 posts/s) and alert on ``postemb nearline --stats`` lag. Pending (read, not yet
    acknowledged) events that get trimmed are reported by the worker as ``trimmed``.
    ``maxlen=None`` never trims (then trim acknowledged history yourself, e.g. XTRIM MINID).
    Publishing is at-least-once too: a retried publish may add a second event for the
    same post, which the idempotent store absorbs (same vector, one hash per post).
    """
    if isinstance(post_id, bool) or not isinstance(post_id, (str, int)):
        raise ValidationError(f"`post_id` must be str or int. Given: {type(post_id).__name__}.")
    pid = str(post_id)
    if not pid or len(pid.encode("utf-8")) > MAX_POST_ID_BYTES:
        raise ValidationError(f"`post_id` must be 1..{MAX_POST_ID_BYTES} UTF-8 bytes. Given: {pid[:40]!r} "
                              f"({len(pid.encode('utf-8'))} bytes).")
    if not isinstance(text, str):
        raise ValidationError(f"`text` must be str. Given: {type(text).__name__}.")
    if not text:
        raise ValidationError("`text` is an empty string: there is nothing to embed. Given: ''. Fix: publish the "
                              "post once it has text (a worker dead-letters an empty one).")
    data = text.encode("utf-8")
    if len(data) > MAX_TEXT_BYTES:
        raise ValidationError(f"`text` must be at most {MAX_TEXT_BYTES} UTF-8 bytes. Given: {len(data)} bytes.")
    fields = {"post_id": pid, "text": data, "created_at": f"{_as_epoch(created_at):.6f}"}
    if prompt_name is not None:
        if not isinstance(prompt_name, str) or not prompt_name \
                or len(prompt_name.encode("utf-8")) > MAX_PROMPT_NAME_BYTES:
            raise ValidationError(f"`prompt_name` must be a non-empty str of at most {MAX_PROMPT_NAME_BYTES} UTF-8 "
                                  f"bytes, or None (the worker's default). Given: {prompt_name!r}.")
        fields["prompt_name"] = prompt_name
    return client.xadd(stream, fields, maxlen=maxlen, approximate=True)


@dataclass
class Post:
    event_id: bytes
    post_id: str
    text: str
    created_at: float
    prompt_name: str | None = None  # the event's prompt (None: the worker's default)


def event_fields(p: Post) -> dict:
    """The fields of the event ``p`` was parsed from (what its dead-letter record keeps)."""
    fields = {b"post_id": p.post_id.encode(), b"text": p.text.encode(), b"created_at": f"{p.created_at:.6f}".encode()}
    if p.prompt_name is not None:
        fields[b"prompt_name"] = p.prompt_name.encode()
    return fields


def id_ms(event_id) -> int:
    s = event_id.decode() if isinstance(event_id, bytes) else str(event_id)
    return int(s.split("-", 1)[0])


def parse_event(event_id: bytes, fields: dict, max_text_bytes: int = MAX_TEXT_BYTES) -> tuple[Post | None, str]:
    """Validate one ``posts`` entry. Returns (Post, "") or (None, reason) for a poison event.
    (Whether a ``prompt_name`` is one of the model's prompts is checked by the worker.)"""
    if not fields:
        return None, "empty event (no fields)"
    raw_pid, raw_text = fields.get(b"post_id"), fields.get(b"text")
    if raw_pid is None:
        return None, "missing field `post_id`"
    if raw_text is None:
        return None, "missing field `text`"
    try:
        pid = raw_pid.decode("utf-8")
    except UnicodeDecodeError:
        return None, "`post_id` is not valid UTF-8"
    if not pid or len(raw_pid) > MAX_POST_ID_BYTES:
        return None, f"`post_id` must be 1..{MAX_POST_ID_BYTES} bytes. Given: {len(raw_pid)} bytes"
    if not raw_text:  # as the HTTP server refuses "": [CLS] [SEP] alone is no post's vector
        return None, EMPTY_TEXT_REASON
    if len(raw_text) > max_text_bytes:
        return None, f"oversized `text`: {len(raw_text)} bytes > {max_text_bytes}"
    try:
        text = raw_text.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"`text` is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    if "\x00" in text:
        return None, "`text` is not text (contains NUL bytes: a binary payload)"
    raw_ts = fields.get(b"created_at")
    if raw_ts is None:
        created = id_ms(event_id) / 1000.0  # the broker's append time
    else:
        try:
            created = float(raw_ts)
        except ValueError:
            created = float("nan")
        if not math.isfinite(created) or created < 0:
            return None, f"invalid `created_at`: {raw_ts[:40]!r}"
        problem = _future_problem(created, time.time())
        if problem:
            return None, problem
    raw_prompt = fields.get(b"prompt_name")
    prompt_name = None
    if raw_prompt is not None:
        try:
            prompt_name = raw_prompt.decode("utf-8")
        except UnicodeDecodeError:
            return None, "`prompt_name` is not valid UTF-8"
        if not prompt_name or len(raw_prompt) > MAX_PROMPT_NAME_BYTES:
            return None, f"`prompt_name` must be 1..{MAX_PROMPT_NAME_BYTES} bytes. Given: {len(raw_prompt)} bytes"
    return Post(event_id, pid, text, created, prompt_name), ""
