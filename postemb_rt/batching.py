"""Batch formation: ``plan_batches`` for bulk ``encode`` (sort by length, cut by a token
budget), and ``DynamicBatcher`` for concurrent callers (the face of csrc/batcher.h; the
scheduler exists in C++ only, and without the extension ``SerialCore`` below computes one
request at a time instead).

A batch costs what its padded matrix costs (rows x longest row), so rows are sorted by
length (longest first: a too-large budget fails on the first batch, not the last) and
cut where either ``max_batch_size`` rows or ``max_batch_tokens`` padded tokens would be
exceeded. Results are scattered back to input order by the caller.
"""
from __future__ import annotations

import atexit
import collections
import itertools
import logging
import threading
import time
import weakref
from concurrent.futures import Future

import numpy as np

from . import forks
from .batcher_args import check_options, check_timeout, token_rows
from .errors import BatcherClosedError, BatchFailedError, DeadlineExceededError, PostEmbError, ValidationError
from .futures import BatcherFuture, SchedulerThread, own_copy, settle

log = logging.getLogger("postemb_rt")


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
    max_queued_tokens: backpressure; ``submit`` past it raises ``OverloadedError`` at once. A request
        larger than it can never be queued (ValidationError); below max_batch_tokens, batches never
        fill by tokens (``Encoder.start_batcher`` refuses that; the server uses it as a small queue).
    batch_overhead_tokens: a model call's fixed cost in padded tokens. Queued posts are
        grouped by length to minimise sum(overhead + rows x longest row): 0 splits into
        many tight batches, a large value gives plain fill-up batches. The group holding the
        oldest queued post always runs next, so nothing waits behind better fits.
    pad_id: the token id written into padding slots.
    vocab_size: the model's vocabulary size (``Encoder`` passes its tokenizer's): ``submit`` refuses
        token ids outside [0, vocab_size) at once (some runtimes read such an id silently as garbage);
        None: any id >= 0. Options are ints (``batcher_args.check_options``), else ValidationError.

    ``submit`` returns a ``concurrent.futures.Future`` per request; ``stats()`` gives queue
    depth, counters and Prometheus-shaped histograms. ``close()`` (also at interpreter exit)
    stops the scheduler thread.

    native: None (default) uses the C++ batcher when ``postemb_rt._C`` is loaded, else
        ``SerialCore`` (no batching across requests) with a logged warning; True requires C++;
        False picks ``SerialCore``. ``implementation`` says which runs (also in ``stats()``
        and ``Encoder.describe()``).
    """

    def __init__(self, embed, *, max_batch_tokens: int = 4096, max_batch_size: int = 64,
                 max_wait_us: int = 500, max_queued_tokens: int = 65536, batch_overhead_tokens: int = 64,
                 pad_id: int = 0, vocab_size: int | None = None, native: bool | None = None):
        from . import native as _native

        self.options = dict(max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                            max_wait_us=max_wait_us, max_queued_tokens=max_queued_tokens,
                            batch_overhead_tokens=batch_overhead_tokens, pad_id=pad_id, vocab_size=vocab_size)
        check_options(embed, self.options)  # before a thread starts or a warning is logged
        if native and _native._C is None:
            raise PostEmbError(
                "`native=True` needs the extension postemb_rt._C, which is not loaded (not built, or "
                "POSTEMB_NATIVE=0). Fix: pip install -e . (needs a C++17 compiler), or native=None."
            )
        use_c = _native._C is not None if native is None else bool(native)
        if native is None and not use_c:
            fix = ("unset POSTEMB_NATIVE" if _native.disabled() else "pip install -e . (needs a C++17 compiler)")
            log.warning("Batcher: %s. Fix: %s", SERIAL, fix)
        self._embed = embed
        self._pending: dict[int, tuple[Future, bool]] = {}
        self._tickets = itertools.count(1)
        self._batch_exc: BaseException | None = None
        self._thread = SchedulerThread()  # its futures' result() refuses to wait on it
        # The callbacks hold only a weak reference to self, so dropping the last user reference
        # is never done by (nor waits for) the scheduler thread; _LIVE keeps self until close().
        ref = weakref.ref(self)
        core_cls = _native._C.DynamicBatcher if use_c else SerialCore
        self.implementation = "C++ (postemb_rt._C)" if use_c else SERIAL
        self._core = core_cls(_make_run(ref), _make_on_done(ref), **{**self.options, "vocab_size": vocab_size or 0})
        with _LIVE_LOCK:
            _LIVE.add(self)
        forks.holds_threads(self)

    def _after_fork_in_child(self) -> None:
        """postemb_rt.forks: the scheduler thread stayed in the parent, and a lock of it may be held for ever:
        never close this copy (the exit hook would wait for that thread), refuse work; the C++ core is leaked."""
        global _LIVE_LOCK
        _LIVE_LOCK = threading.Lock()
        _LIVE.discard(self)
        core, self._core = self._core, forks.Abandoned()
        getattr(core, "abandon", lambda: None)()

    # -- callers -----------------------------------------------------------------------
    def submit(self, posts, timeout: float | None = None, squeeze: bool = False) -> Future:
        """Queue one request.

        posts: a list of token-id lists (int), each 1..max_batch_tokens long, e.g. from
            ``PostTokenizer``; ids in [0, vocab_size). timeout: seconds > 0 (None: no deadline); a
            request not computed by then fails with ``DeadlineExceededError`` and is not computed.
        squeeze: resolve to row 0 as (D,) instead of (1, D).
        Returns a Future of float32 (len(posts), D) in post order. Raises ``OverloadedError``
        (queue full; retry later), ``BatcherClosedError``, ``ValidationError`` (a value),
        ``TypeError`` (``posts`` not a list of lists of int), immediately.
        """
        timeout_s = check_timeout(timeout)
        fut = BatcherFuture(self._thread)
        ticket = next(self._tickets)
        self._pending[ticket] = (fut, squeeze)
        try:
            self._core.submit(ticket, posts, timeout_s)
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
        all computed batches), ``mean_batch_size`` and ``implementation``. Histograms (C++
        only; ``SerialCore`` has none) are dicts of ``bounds``, ``counts`` (per bucket, the
        last one above the last bound), ``sum``, ``count``."""
        s = self._core.stats()
        padded = s["padded_tokens_computed"]
        s["padding_ratio"] = 1.0 - s["tokens_computed"] / padded if padded else 0.0
        s["mean_batch_size"] = s["posts_computed"] / s["batches"] if s["batches"] else 0.0
        s["implementation"] = self.implementation
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
        self._thread.ident = threading.get_ident()
        self._batch_exc = None  # a failed batch whose callers had all cancelled left its own behind
        try:
            return self._embed(input_ids, attention_mask)
        except BaseException as exc:
            self._batch_exc = exc  # raised to this batch's callers as is (see _on_done)
            raise

    def _on_done(self, items) -> None:
        self._thread.ident = threading.get_ident()
        batch_exc, self._batch_exc = self._batch_exc, None
        for ticket, status, values, message, _queue_s, _infer_s in items:
            entry = self._pending.pop(ticket, None)
            if entry is None:
                continue
            fut, squeeze = entry
            if status == _OK:
                settle(fut, values[0] if squeeze else values)
            elif status == _BACKEND_ERROR:
                settle(fut, exc=own_copy(batch_exc) if batch_exc is not None else BatchFailedError(message))
            else:
                settle(fut, exc=(DeadlineExceededError if status == _DEADLINE else BatcherClosedError)(message))


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


# ---------------------------------------------------------------------------------------
# Without the extension: no second scheduler, just one request at a time.
# ---------------------------------------------------------------------------------------
SERIAL = "serial fallback (postemb_rt._C not loaded: one request at a time, no batching across requests)"
COUNTERS = ("requests_submitted", "requests_ok", "requests_failed", "requests_expired", "requests_rejected",
            "requests_cancelled", "requests_closed", "batches", "batches_failed", "posts_computed",
            "tokens_computed", "padded_tokens_computed")  # csrc/batcher.h BatcherStats
GAUGES = ("pending_requests", "queued_posts", "queued_tokens", "in_flight_posts")
QUEUE_FIX = ("submit fewer posts per request (for bulk work, Encoder.encode() has no queue), or raise the limit "
             "where the batcher is started: Encoder.start_batcher(max_queued_tokens=...) or "
             "DynamicBatcher(max_queued_tokens=...).")  # csrc/batcher.cpp kQueueFix


class SerialCore:
    """The batcher core without ``postemb_rt._C``: requests are computed one after another, in
    arrival order, on one thread, each cut by ``plan_batches`` as ``Encoder.encode`` cuts a
    call, so concurrent callers are served correctly but never share a model call.

    Same constructor, methods, statuses and counters as ``_C.DynamicBatcher`` (csrc/batcher.h),
    so ``DynamicBatcher`` wraps either; ``max_wait_us`` and ``batch_overhead_tokens`` are
    accepted and unused (nothing is grouped), and ``stats()`` has no histograms. Backpressure
    (``max_queued_tokens``), deadlines, cancellation and ``close(drain)`` behave as in C++.
    """

    def __init__(self, run, on_done, max_batch_tokens=4096, max_batch_size=64, max_wait_us=500,
                 max_queued_tokens=65536, batch_overhead_tokens=64, pad_id=0, vocab_size=0):
        self._run, self._on_done = run, on_done
        self._max_batch_tokens, self._max_batch_size = max_batch_tokens, max_batch_size
        self._max_queued_tokens, self._pad_id, self._vocab_size = max_queued_tokens, pad_id, vocab_size
        self._cv = threading.Condition()
        self._queue: collections.deque = collections.deque()  # (ticket, rows, deadline), arrival order
        self._live: set[int] = set()  # tickets queued or in flight, not cancelled
        self._queued_tokens = self._in_flight = 0
        self._closing, self._drain = False, True
        self._c = dict.fromkeys(COUNTERS, 0)
        # Daemon: the atexit hook above drains it; a non-daemon thread would block exit first.
        self._thread = threading.Thread(target=self._loop, name="postemb-serial-batcher", daemon=True)
        self._thread.start()

    def submit(self, ticket: int, posts, timeout_s: float = 0.0) -> None:
        from .errors import OverloadedError

        rows = token_rows(posts, self._vocab_size)
        if not rows:
            raise ValueError("`posts` must hold at least one post. Given: 0 posts.")
        for i, r in enumerate(rows):
            if not 1 <= len(r) <= self._max_batch_tokens:
                raise ValueError(f"`posts[{i}]` must hold 1 to max_batch_tokens ({self._max_batch_tokens}) "
                                 f"token ids. Given: {len(r)}.")
        tokens, limit = sum(map(len, rows)), self._max_queued_tokens
        if tokens > limit:
            raise ValueError(f"`posts` hold {tokens} tokens, more than max_queued_tokens ({limit}), so they can "
                             f"never be queued. Fix: {QUEUE_FIX}")
        with self._cv:
            if self._closing:
                raise BatcherClosedError("the batcher is closed; submit() is no longer accepted.")
            if self._queued_tokens + tokens > limit:
                self._c["requests_rejected"] += 1
                raise OverloadedError(f"the batcher queue is full: {self._queued_tokens} tokens queued, this request "
                                      f"adds {tokens}, max_queued_tokens is {limit}. Retry later.")
            if ticket in self._live:
                raise ValueError(f"`ticket` {ticket} is already pending.")
            deadline = time.monotonic() + timeout_s if timeout_s > 0 else float("inf")
            self._queue.append((ticket, rows, deadline, tokens))
            self._live.add(ticket)
            self._queued_tokens += tokens
            self._c["requests_submitted"] += 1
            self._cv.notify()

    def cancel(self, ticket: int) -> bool:
        with self._cv:
            if ticket not in self._live:
                return False
            self._live.discard(ticket)  # skipped when its turn comes (or its result dropped)
            self._c["requests_cancelled"] += 1
            return True

    def close(self, drain: bool = True) -> None:
        with self._cv:
            self._drain = self._drain and drain
            self._closing = True
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    @property
    def closed(self) -> bool:
        with self._cv:
            return self._closing

    def stats(self) -> dict:
        with self._cv:
            return dict(self._c, pending_requests=len(self._live), queued_posts=sum(len(r[1]) for r in self._queue),
                        queued_tokens=self._queued_tokens, in_flight_posts=self._in_flight)

    # -- the one worker thread -----------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue:
                    return  # closing, nothing left
                ticket, rows, deadline, tokens = self._queue.popleft()
                self._queued_tokens -= tokens
                if ticket not in self._live:  # cancelled while queued
                    continue
                if self._closing and not self._drain:
                    self._live.discard(ticket)
                    self._c["requests_closed"] += 1
                    item = (ticket, _CLOSED, None, "the batcher was closed before this request was computed.", 0.0, 0.0)
                elif time.monotonic() >= deadline:
                    self._live.discard(ticket)
                    self._c["requests_expired"] += 1
                    item = (ticket, _DEADLINE, None, "the request's deadline passed in the batcher queue; it was "
                                                     "not computed.", 0.0, 0.0)
                else:
                    item = None
                    self._in_flight = len(rows)
            if item is None:
                item = self._compute(ticket, rows)
            try:
                self._on_done([item])
            except BaseException:  # noqa: BLE001 - must not stop the worker
                log.exception("postemb_rt serial batcher on_done raised")

    def _compute(self, ticket: int, rows: list[list[int]]) -> tuple:
        from .native import pack_padded

        start = time.monotonic()
        values, error, counts = None, None, []
        for idx in plan_batches([len(r) for r in rows], self._max_batch_size, self._max_batch_tokens):
            ids, mask = pack_padded([rows[i] for i in idx], self._pad_id)
            counts.append((len(idx), int(mask.sum()), mask.size))
            try:
                out = self._run(ids, mask)
            except BaseException as exc:  # noqa: BLE001 - fails this request only, as in C++
                error = str(exc) or type(exc).__name__
                break
            if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.ndim != 2 or len(out) != len(idx):
                error = (f"`run` must return float32 ({len(idx)}, D). Given: "
                         f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}.")
                break
            if values is None:
                values = np.empty((len(rows), out.shape[1]), np.float32)
            values[idx] = out
        infer = time.monotonic() - start
        with self._cv:
            c = self._c
            for posts, real, padded in counts:
                c["batches"] += 1
                c["posts_computed"] += posts
                c["tokens_computed"] += real
                c["padded_tokens_computed"] += padded
            c["batches_failed"] += error is not None
            self._in_flight = 0
            if ticket not in self._live:  # cancelled while computed: nobody waits for it
                return (ticket, _CLOSED, None, "cancelled", 0.0, infer)
            self._live.discard(ticket)
            if error is not None:
                c["requests_failed"] += 1
                return (ticket, _BACKEND_ERROR, None, error, 0.0, infer)
            c["requests_ok"] += 1
            return (ticket, _OK, values, "", 0.0, infer)
