"""Batch formation for bulk ``encode``: sort by length, cut by a token budget.

A batch costs what its padded matrix costs (rows x longest row), so rows are sorted by
length (longest first: a too-large budget fails on the first batch, not the last) and
cut where either ``max_batch_size`` rows or ``max_batch_tokens`` padded tokens would be
exceeded. Results are scattered back to input order by the caller.
"""
from __future__ import annotations

import numpy as np

from .errors import ValidationError


def plan_batches(lengths, max_batch_size: int, max_batch_tokens: int) -> list[np.ndarray]:
    """lengths: (N,) token counts. Returns index arrays (into lengths), one per batch,
    covering every index exactly once; padded tokens per batch <= max_batch_tokens
    unless a single row alone is longer than the budget."""
    if max_batch_size < 1:
        raise ValidationError(f"`batch_size` must be >= 1. Given: {max_batch_size}.")
    if max_batch_tokens < 1:
        raise ValidationError(f"`max_batch_tokens` must be >= 1. Given: {max_batch_tokens}.")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = int(lengths[order[start]])  # sorted descending: the first row is the widest
        rows = max(1, min(max_batch_size, max_batch_tokens // max(longest, 1)))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def padding_ratio(lengths, batches: list[np.ndarray]) -> float:
    """Fraction of padded slots among all slots computed (0 = no padding)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    slots = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1.0 - float(lengths.sum()) / slots if slots else 0.0


# ---------------------------------------------------------------------------------------
# Dynamic batching for concurrent callers: the thin Python face of csrc/batcher.h.
# ---------------------------------------------------------------------------------------
import atexit  # noqa: E402
import itertools  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
import weakref  # noqa: E402
from concurrent.futures import Future, InvalidStateError  # noqa: E402

from .errors import PostEmbError  # noqa: E402

log = logging.getLogger("postemb_rt")


class BatcherClosedError(PostEmbError, RuntimeError):
    """``submit`` after the batcher was closed, or a request dropped by ``close(drain=False)``."""


class DeadlineExceededError(PostEmbError, TimeoutError):
    """A request's ``timeout`` passed before it was computed; it was not computed."""


class BatchFailedError(PostEmbError, RuntimeError):
    """The backend failed the batch this request was in (raised when the original exception
    object is not available; normally the backend's own exception is raised)."""


# Status codes of csrc/batcher.h RequestStatus.
_OK, _BACKEND_ERROR, _DEADLINE, _CLOSED = 0, 1, 2, 3

# Batchers that are not closed yet, kept alive so that (a) the scheduler thread never
# outlives its owner and (b) they are drained before the interpreter tears down.
_LIVE: "set[DynamicBatcher]" = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _close_all_at_exit() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for b in live:
        b.close(drain=True)


class DynamicBatcher:
    """Many concurrent callers, one model: coalesces tokenized posts into token-budget batches.

    embed: ``embed(input_ids, attention_mask) -> float32 (B, D)`` with int64 (B, S) inputs
        (the Backend contract, e.g. ``backend.embed``). Called on the batcher's scheduler
        thread, with the GIL held for that call only (ONNX Runtime and torch release it inside).
    max_batch_tokens: padded tokens per batch (rows x longest row).
    max_batch_size: rows per batch.
    max_wait_us: how long the oldest queued post waits for company before its batch runs.
    max_queued_tokens: backpressure; ``submit`` past it raises ``OverloadedError`` at once.
    batch_overhead_tokens: a model call's fixed cost in padded tokens. Queued posts are
        grouped by length to minimise sum(overhead + rows x longest row): 0 splits into
        many tight batches, a large value gives plain fill-up batches. The group holding the
        oldest queued post always runs next, so nothing waits behind better fits.
    pad_id: the token id written into padding slots.

    ``submit`` returns a ``concurrent.futures.Future`` per request; ``stats()`` gives queue
    depth, counters and Prometheus-shaped histograms. ``close()`` (also at interpreter exit)
    stops the scheduler thread. The C++ extension is required: there is no pure-Python
    batcher (``Encoder.encode`` needs none), and constructing one without ``_C`` raises.
    """

    def __init__(self, embed, *, max_batch_tokens: int = 4096, max_batch_size: int = 64,
                 max_wait_us: int = 500, max_queued_tokens: int = 65536, batch_overhead_tokens: int = 64,
                 pad_id: int = 0):
        from . import native

        if native._C is None:
            raise PostEmbError(
                "the dynamic batcher needs the native extension postemb_rt._C, which is not loaded "
                "(not built, or POSTEMB_NATIVE=0). Fix: pip install -e . (needs a C++17 compiler), "
                "or call Encoder.encode from one thread."
            )
        for name, value in (("max_batch_tokens", max_batch_tokens), ("max_batch_size", max_batch_size),
                            ("max_queued_tokens", max_queued_tokens)):
            if not isinstance(value, int) or value < 1:
                raise ValidationError(f"`{name}` must be an int >= 1. Given: {value!r}.")
        if not isinstance(max_wait_us, int) or max_wait_us < 0:
            raise ValidationError(f"`max_wait_us` must be an int >= 0. Given: {max_wait_us!r}.")
        if not isinstance(batch_overhead_tokens, int) or batch_overhead_tokens < 0:
            raise ValidationError(f"`batch_overhead_tokens` must be an int >= 0. Given: {batch_overhead_tokens!r}.")
        self._embed = embed
        self._pending: dict[int, tuple[Future, bool]] = {}
        self._tickets = itertools.count(1)
        self._batch_exc: BaseException | None = None
        self.options = dict(max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                            max_wait_us=max_wait_us, max_queued_tokens=max_queued_tokens,
                            batch_overhead_tokens=batch_overhead_tokens, pad_id=pad_id)
        # The callbacks hold only a weak reference to self, so dropping the last user reference
        # is never done by (nor waits for) the scheduler thread; _LIVE keeps self until close().
        ref = weakref.ref(self)
        self._core = native._C.DynamicBatcher(_make_run(ref), _make_on_done(ref), **self.options)
        with _LIVE_LOCK:
            _LIVE.add(self)

    # -- callers -----------------------------------------------------------------------
    def submit(self, posts, timeout: float | None = None, squeeze: bool = False) -> Future:
        """Queue one request.

        posts: a list of token-id lists (int), each 1..max_batch_tokens long, e.g. from
            ``PostTokenizer``. timeout: seconds; a request not computed by then fails with
            ``DeadlineExceededError`` and is not computed.
        squeeze: resolve to row 0 as (D,) instead of (1, D).
        Returns a Future of float32 (len(posts), D) in post order. Raises ``OverloadedError``
        (queue full; retry later), ``BatcherClosedError``, ``ValidationError``, immediately.
        """
        fut: Future = Future()
        ticket = next(self._tickets)
        self._pending[ticket] = (fut, squeeze)
        try:
            self._core.submit(ticket, posts, float(timeout) if timeout else 0.0)
        except ValueError as exc:
            del self._pending[ticket]
            raise ValidationError(str(exc)) from None
        except BaseException:
            del self._pending[ticket]
            raise
        fut.add_done_callback(self._cancel_hook(ticket))
        return fut

    def _cancel_hook(self, ticket: int):
        core = self._core

        def on_done(fut: Future) -> None:
            if fut.cancelled():  # e.g. an asyncio task awaiting it was cancelled
                self._pending.pop(ticket, None)
                core.cancel(ticket)

        return on_done

    def stats(self) -> dict:
        """Counters and gauges (see csrc/batcher.h BatcherStats), plus ``padding_ratio`` (over
        all computed batches) and ``mean_batch_size``. Histograms are dicts of ``bounds``,
        ``counts`` (per bucket, the last one above the last bound), ``sum``, ``count``."""
        s = self._core.stats()
        padded = s["padded_tokens_computed"]
        s["padding_ratio"] = 1.0 - s["tokens_computed"] / padded if padded else 0.0
        s["mean_batch_size"] = s["posts_computed"] / s["batches"] if s["batches"] else 0.0
        return s

    @property
    def closed(self) -> bool:
        return self._core.closed

    def close(self, drain: bool = True) -> None:
        """drain=True: compute every queued request, then stop; drain=False: fail queued
        requests with ``BatcherClosedError``. Returns when the scheduler thread has exited.
        Idempotent. Do not call it from inside a future's callback (it would only ask the
        thread to stop)."""
        self._core.close(drain)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- scheduler thread (GIL held by the binding for these calls only) ----------------
    def _run(self, input_ids, attention_mask):
        try:
            return self._embed(input_ids, attention_mask)
        except BaseException as exc:
            self._batch_exc = exc  # raised to this batch's callers as is (see _on_done)
            raise

    def _on_done(self, items) -> None:
        batch_exc, self._batch_exc = self._batch_exc, None
        for ticket, status, values, message, _queue_s, _infer_s in items:
            entry = self._pending.pop(ticket, None)
            if entry is None:
                continue
            fut, squeeze = entry
            try:
                if status == _OK:
                    fut.set_result(values[0] if squeeze else values)
                elif status == _BACKEND_ERROR:
                    fut.set_exception(batch_exc if batch_exc is not None else BatchFailedError(message))
                elif status == _DEADLINE:
                    fut.set_exception(DeadlineExceededError(message))
                else:
                    fut.set_exception(BatcherClosedError(message))
            except InvalidStateError:  # cancelled meanwhile
                pass


def _make_run(ref):
    def run(input_ids, attention_mask):
        self = ref()
        if self is None:
            raise BatcherClosedError("the batcher was garbage-collected.")
        return self._run(input_ids, attention_mask)

    return run


def _make_on_done(ref):
    def on_done(items):
        self = ref()
        if self is not None:
            self._on_done(items)

    return on_done
