"""Events on the ``posts`` stream: a post created or edited (``publish``) or deleted
(``publish_delete``), the producer side, and ``parse_event`` (the worker's validation: a
malformed event is poison, with a reason).

A post event has fields ``post_id``, ``text``, ``created_at`` (and ``prompt_name``); a
deletion has ``post_id``, ``op`` = ``delete`` and ``deleted_at``, and no ``text``."""
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
EMPTY_TEXT_REASON = ("empty `text`: nothing to embed (the HTTP server refuses an empty input too; a post whose "
                     "text was deleted is a deletion: publish_delete)")
DELETE_OP = b"delete"  # the ``op`` of a deletion event (a post event has no ``op``)


def _future_problem(at: float, now: float, name: str = "created_at") -> str:
    """Why ``at`` (seconds since the epoch) cannot be the event time ``name``, or ""."""
    if at <= now + MAX_FUTURE_S:
        return ""
    unit = next((u for u, f in (("milliseconds", 1e3), ("microseconds", 1e6), ("nanoseconds", 1e9))
                 if abs(at / f - now) <= MAX_FUTURE_S), None)
    return (f"`{name}` {at!r} is {at - now:.3g} s in the future: seconds since the epoch are "
            f"expected{f', this looks like {unit}' if unit else ''}")


def _as_epoch(at, name: str = "created_at") -> float:
    """The event time ``at`` (argument ``name``) as seconds since the epoch; None: now."""
    if at is None:
        return time.time()
    if isinstance(at, _dt.datetime):
        if at.tzinfo is None:
            raise ValidationError(f"`{name}` must be timezone-aware. Given: {at!r}.")
        return at.timestamp()
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at) or at < 0:
        raise ValidationError(f"`{name}` must be seconds since the epoch (float >= 0) or an aware datetime. "
                              f"Given: {at!r}.")
    problem = _future_problem(float(at), time.time(), name)
    if problem:
        raise ValidationError(f"{problem}. Fix: pass seconds (e.g. time.time(), or milliseconds / 1000), or an "
                              "aware datetime.")
    return float(at)


def _post_id(post_id) -> str:
    if isinstance(post_id, bool) or not isinstance(post_id, (str, int)):
        raise ValidationError(f"`post_id` must be str or int. Given: {type(post_id).__name__}.")
    pid = str(post_id)
    if not pid or len(pid.encode("utf-8")) > MAX_POST_ID_BYTES:
        raise ValidationError(f"`post_id` must be 1..{MAX_POST_ID_BYTES} UTF-8 bytes. Given: {pid[:40]!r} "
                              f"({len(pid.encode('utf-8'))} bytes).")
    return pid


def publish(client, post_id, text: str, created_at=None, *, stream: str = POSTS_STREAM,
            maxlen: int | None = POSTS_MAXLEN, prompt_name: str | None = None) -> bytes:
    """Append a post-created event to the ``posts`` stream; returns its stream id.

    client: a redis-py client (see :func:`connect`).
    post_id: str or int, non-empty, at most 256 UTF-8 bytes.
    text: the post (str, not empty, at most MAX_TEXT_BYTES = 32 KiB as UTF-8; an empty or longer
        post is refused here, as is one with a NUL character, and a worker dead-letters any that reach it
        from other producers).
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
    pid = _post_id(post_id)
    if not isinstance(text, str):
        raise ValidationError(f"`text` must be str. Given: {type(text).__name__}.")
    if not text:
        raise ValidationError("`text` is an empty string: there is nothing to embed. Given: ''. Fix: publish the "
                              "post once it has text (a worker dead-letters an empty one); a post whose text was "
                              "deleted: publish_delete(client, post_id).")
    if "\x00" in text:  # what a worker dead-letters as a binary payload (parse_event)
        raise ValidationError(f"`text` contains a NUL character (at index {text.index(chr(0))}): a worker "
                              "dead-letters it as a binary payload, not text. Given: a str with NUL. Fix: remove "
                              "the NUL characters (text.replace('\\x00', '')).")
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


def publish_delete(client, post_id, deleted_at=None, *, stream: str = POSTS_STREAM,
                   maxlen: int | None = POSTS_MAXLEN) -> bytes:
    """Append a post-deleted event to the ``posts`` stream; returns its stream id.

    The worker replaces the post's record with a tombstone (``fetch`` returns None, index
    readers skip it) and announces the deletion once on ``embeddings``, unless the record holds
    a newer event (the stream's order decides: a post published again after this event comes
    back, an older event arriving late does not). A post never seen is tombstoned too, so a late
    create cannot bring it back. Deleting a post's text (an edit to "") is a deletion.

    post_id: as :func:`publish`. deleted_at: seconds since the epoch (float) or an aware datetime;
    default: now (checked as ``created_at`` is). Event fields: ``post_id``, ``op`` = ``delete``,
    ``deleted_at`` ("%.6f"). maxlen: as :func:`publish` (the same stream, so the same policy).
    """
    fields = {"post_id": _post_id(post_id), "op": DELETE_OP, "deleted_at": f"{_as_epoch(deleted_at, 'deleted_at'):.6f}"}
    return client.xadd(stream, fields, maxlen=maxlen, approximate=True)


@dataclass
class Post:
    event_id: bytes
    post_id: str
    text: str
    created_at: float
    prompt_name: str | None = None  # the event's prompt (None: the worker's default)


@dataclass
class Deletion:
    event_id: bytes
    post_id: str
    deleted_at: float  # seconds since the epoch (producer's clock)


def event_fields(p: Post | Deletion) -> dict:
    """The fields of the event ``p`` was parsed from (what its dead-letter record keeps)."""
    if isinstance(p, Deletion):
        return {b"post_id": p.post_id.encode(), b"op": DELETE_OP, b"deleted_at": f"{p.deleted_at:.6f}".encode()}
    fields = {b"post_id": p.post_id.encode(), b"text": p.text.encode(), b"created_at": f"{p.created_at:.6f}".encode()}
    if p.prompt_name is not None:
        fields[b"prompt_name"] = p.prompt_name.encode()
    return fields


def id_ms(event_id) -> int:
    s = event_id.decode() if isinstance(event_id, bytes) else str(event_id)
    return int(s.split("-", 1)[0])


def _event_time(event_id: bytes, raw, name: str) -> tuple[float, str]:
    """(seconds since the epoch, "") for the event time field ``name`` (raw bytes, or None: the
    broker's append time), or (nan, why) for one that cannot be a time."""
    if raw is None:
        return id_ms(event_id) / 1000.0, ""
    try:
        at = float(raw)
    except ValueError:
        at = float("nan")
    if not math.isfinite(at) or at < 0:
        return at, f"invalid `{name}`: {raw[:40]!r}"
    return at, _future_problem(at, time.time(), name)


def parse_event(event_id: bytes, fields: dict,
                max_text_bytes: int = MAX_TEXT_BYTES) -> tuple[Post | Deletion | None, str]:
    """Validate one ``posts`` entry. Returns (Post, "") for a post, (Deletion, "") for a deletion
    (``op`` = ``delete``), or (None, reason) for a poison event. (Whether a ``prompt_name`` is one
    of the model's prompts is checked by the worker.)"""
    if not fields:
        return None, "empty event (no fields)"
    raw_pid, raw_text, op = fields.get(b"post_id"), fields.get(b"text"), fields.get(b"op")
    if op is not None and op != DELETE_OP:
        return None, f"unknown `op` {op[:40]!r}: a post event has no `op`, a deletion has `op` = 'delete'"
    if raw_pid is None:
        return None, "missing field `post_id`"
    if op is None and raw_text is None:
        return None, "missing field `text`"
    if op is not None and raw_text is not None:
        return None, "a deletion (`op` = 'delete') carries no `text`: is it a post or a deletion?"
    try:
        pid = raw_pid.decode("utf-8")
    except UnicodeDecodeError:
        return None, "`post_id` is not valid UTF-8"
    if not pid or len(raw_pid) > MAX_POST_ID_BYTES:
        return None, f"`post_id` must be 1..{MAX_POST_ID_BYTES} bytes. Given: {len(raw_pid)} bytes"
    if op is not None:
        deleted, problem = _event_time(event_id, fields.get(b"deleted_at"), "deleted_at")
        return (None, problem) if problem else (Deletion(event_id, pid, deleted), "")
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
    created, problem = _event_time(event_id, fields.get(b"created_at"), "created_at")
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
