"""The serving runtime: loads the model (on a thread, so ``/health`` answers meanwhile), owns
the encoder and the dynamic batcher, tracks readiness and backend health, and turns a list
of texts into vectors. Routes (``routes``) call it; it knows nothing of routing, request
bodies or metrics. Its failures are ``ApiError`` (the status each condition answers)."""
from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from typing import Callable

import numpy as np

from .. import prompts, quantization
from ..encode_options import allowed_dims
from ..errors import BatcherClosedError, DeadlineExceededError, OverloadedError, ValidationError
from .config import ServeConfig
from . import encodings
from .errors import NO_RETRY, ApiError, retry_after
from .tokens import check_cut, check_vocab, cut_side, fit_chars, fit_ids

log = logging.getLogger("postemb_rt.server")

TOKENIZE_INLINE_CHARS = 16_384  # requests with more characters are tokenized off the event loop
TOKENIZE_THREADS = 2  # big requests tokenized at once (encode_batch is itself multi-threaded)
PROBE_TIMEOUT_S = 10.0
# a request bigger than max_queued_tokens is fed in pieces of at most this fraction of the queue (65,536 / 4:
# 64 posts of 256 tokens, one full batch at the defaults), so a piece finds room beside other requests
PIECES_PER_QUEUE = 4
# a later piece that finds the queue full waits for a batch to leave it, polling from this pause up to the max
ROOM_POLL_S, ROOM_POLL_MAX_S = 0.005, 0.1


class Runtime:
    """Loads the model (on a thread, so /health answers meanwhile), owns the batcher, tracks
    readiness and backend health. ``load_encoder``: () -> Encoder (tests inject faults here).
    ``name``: the served name (``--model NAME=MODEL``); None: the model's model_version, once loaded."""

    def __init__(self, cfg: ServeConfig, load_encoder: Callable | None = None, name: str | None = None):
        self.cfg = cfg
        self.name = name
        self._load_encoder = load_encoder or functools.partial(_default_encoder, cfg)
        self.encoder = None
        self.batcher = None
        self.ready = False
        self.load_error: str | None = None
        self.quant_ranges: np.ndarray | None = None  # int8 / uint8 calibration of /embed_full (at load)
        self.backend_error: str | None = None  # last backend failure; cleared by the next success
        self.last_batch_end = 0.0  # time.monotonic() when the last model call returned (or failed)
        self.batches_done = 0  # model calls returned (or failed)
        self._tokenize_slots: asyncio.Semaphore | None = None
        self.on_fatal: Callable[[], None] = lambda: None  # set by `postemb serve`: stop the server
        self.started = time.time()
        self._closed = False
        self._lock = threading.Lock()
        self._room_lock = threading.Lock()
        self._room_waiters: list = []  # (event loop, Future) of the pieces waiting for room (_queue)

    # -- lifecycle ---------------------------------------------------------------------
    def load(self) -> None:
        from ..batching import DynamicBatcher

        try:
            enc = self._load_encoder()
            # int8 / uint8 calibration at the default dim: once per model (cached on disk), before any request
            self.quant_ranges = quantization.ranges_for(enc, enc.truncate_dim, normalize=True)
            # normalize=False on the batcher so /embed and /embed_full can serve raw vectors; rows are
            # normalised per request below (one pass over (n, dim) float32).
            embed = functools.partial(enc.backend.embed, normalize=False)

            def timed_embed(input_ids, attention_mask):  # on the batcher's thread
                self.made_room()  # this batch left the queue: room for a piece waiting (_queue)
                try:
                    return embed(input_ids, attention_mask)
                finally:
                    self.last_batch_end = time.monotonic()
                    self.batches_done += 1

            batcher = DynamicBatcher(
                timed_embed, pad_id=enc.tokenizer.pad_id, vocab_size=enc.tokenizer.vocab_size,
                max_batch_tokens=enc.max_batch_tokens, max_batch_size=self.cfg.max_batch_size,
                max_wait_us=self.cfg.max_wait_us, max_queued_tokens=self.cfg.max_queued_tokens,
                batch_overhead_tokens=self.cfg.batch_overhead_tokens)
            with self._lock:
                if self._closed:  # shut down while loading
                    batcher.close()
                    enc.close()
                    return
                self.encoder, self.batcher = enc, batcher
            # warm-up through the whole path (tokenizer, batcher, backend)
            batcher.submit(enc.tokenizer(["warm-up post"]).ids).result(timeout=120)
            self.name = self.name or enc.model_version
            self.ready = True
            log.info("ready: %s", enc.describe())
        except Exception as exc:  # noqa: BLE001 - reported by /ready and the exit code
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("postemb serve: the model %r failed to load: %s", self.cfg.model, self.load_error)
            self.on_fatal()

    def close(self) -> None:
        """Drain the batcher (every queued request is computed), then release the model."""
        with self._lock:
            self._closed = True
            batcher, enc = self.batcher, self.encoder
        self.ready = False
        if batcher is not None:
            batcher.close(drain=True)
        if enc is not None:
            enc.close()

    def require_encoder(self):
        if not self.ready:
            if self.load_error:  # the detail (paths, OS errors) is in the log, never in an answer
                raise ApiError(503, "The model failed to load; the server log says why.", type="server_error",
                               code="model_load_failed", headers=NO_RETRY)
            raise ApiError(503, "The model is still loading; retry shortly.", type="server_error",
                           code="loading", headers=retry_after(1))
        return self.encoder

    @property
    def default_dim(self) -> int:
        """The dim of an answer to a request naming no ``dimensions``: the model's ``truncate_dim`` (the prefix
        ``Encoder.encode`` and sentence-transformers return by default), else its full dim. Once loaded."""
        return self.encoder.get_embedding_dimension()

    def vector_version(self, dim: int | None = None, long_posts: str = "truncate",
                       truncation_direction: str | None = "right") -> str:
        """The vector version of this model's answers cut to ``dim`` (None: ``default_dim``) in ``long_posts``
        mode (/v1/embeddings always truncates, /embed_full takes a mode per request): ``Encoder.vector_version_at``,
        plus ``+<side>`` for posts truncated on the other side than the model's (``truncation_direction``, as
        ``embed``'s), whose long posts' vectors differ. Once loaded."""
        enc = self.encoder
        version, side = enc.vector_version_at(dim or self.default_dim, long_posts), cut_side(enc, truncation_direction)
        other = side != enc.tokenizer.truncation_side and (long_posts or enc.long_posts) == "truncate"
        return f"{version}+{side}" if other else version

    async def ranges_at(self, dim: int):
        """float32 (2, dim): the int8 / uint8 calibration ranges of this model's unit vectors cut to ``dim``,
        those computed at load for ``default_dim``, else computed once (cached on disk) off the event loop."""
        if dim == self.default_dim:
            return self.quant_ranges
        return await self.off_loop(quantization.ranges_for, self.encoder, dim, True)  # truncate_dim, normalize

    # -- one embedding request ---------------------------------------------------------
    def prompted(self, enc, texts: list[str], prompt_name: str | None) -> list[str]:
        """``texts`` with the prompt that applies (``prompt_name``'s, else the model's default, if
        any) prepended, as ``Encoder.encode`` does (postemb_rt.prompts); 422 for an unknown name."""
        try:
            return prompts.apply(texts, prompts.resolve(enc.model.config, None, prompt_name, fix="use one of those"))
        except ValidationError as exc:
            raise ApiError(422, str(exc), param="prompt_name", code="unknown_prompt_name") from None

    async def embed(self, texts: list, field: str, truncate: bool, normalize: bool,
                    long_posts: str = "truncate", chunk_stats: dict | None = None, prompt_name: str | None = None,
                    truncation_direction: str | None = "right", item: Callable[[int], str] | None = None):
        """Returns (float32 (n, dim) vectors in input order, tokens computed, truncated indices).
        ``texts``: str each, or (text-embeddings-inference's /embed) a list of token ids, read as TEI
        reads them (``serving.tokens``). long_posts="chunk": windows of long posts share the batcher,
        combined here (postemb_rt.long_posts); ``chunk_stats`` gets {"chunked", "windows"}.
        truncation_direction "left" keeps a long post's last max_length tokens instead of its first (default
        "right", as text-embeddings-inference, which reads no tokenizer_config.json; None: the model's side).
        Errors call the request's field ``field`` and its post i ``item(i)`` (default ``field[i]``)."""
        enc = self.require_encoder()
        truncation_direction = cut_side(enc, truncation_direction)
        item = item or f"{field}[{{}}]".format
        at = [i for i, t in enumerate(texts) if not isinstance(t, str)]  # token-id inputs
        ids, ids_cut, keep = [], [], None
        if at:
            rows = [texts[i] for i in at]
            check_vocab(enc.tokenizer, rows, _reindexed(item, at))
            if prompts.name_in_use(enc.model.config, prompt_name) is not None:
                decoded = await self.off_loop(enc.tokenizer.decode, rows, True)  # TEI: a prompt reads the text
                texts = list(texts)
                for i, text in zip(at, decoded):
                    texts[i] = text
            else:
                ids, ids_cut = fit_ids(rows, _reindexed(item, at), enc.max_length, truncate, truncation_direction,
                                       long_posts == "chunk")
                keep = [i for i, t in enumerate(texts) if isinstance(t, str)]
                texts, item = [texts[i] for i in keep], _reindexed(item, keep)  # the texts' own indices
        texts, cut = fit_chars(texts, item, truncate and long_posts != "chunk", self.cfg.max_input_chars,
                               truncation_direction)
        texts = self.prompted(enc, texts, prompt_name)
        if long_posts == "chunk":
            vecs, n_tokens, truncated = await self._embed_chunked(enc, texts, field, item, truncate, normalize,
                                                                  chunk_stats, ids)
        else:
            vecs, n_tokens, truncated = await self._embed_truncated(enc, texts, field, item, truncate, normalize,
                                                                    truncation_direction, cut, ids)
        if keep is None:
            return vecs, n_tokens, truncated
        out = np.empty_like(vecs)  # texts first, then the token-id inputs: back to the request's order
        out[keep], out[at] = vecs[:len(keep)], vecs[len(keep):]
        return out, n_tokens, sorted([keep[j] for j in truncated] + [at[j] for j in ids_cut])

    async def _embed_truncated(self, enc, texts, field, item, truncate, normalize, direction, cut, ids):
        """``texts`` cut to max_length tokens, then the token-id rows ``ids``, through the batcher:
        (float32 (len(texts) + len(ids), dim), tokens, truncated text indices)."""
        if sum(map(len, texts)) > TOKENIZE_INLINE_CHARS:
            tok = await self.off_loop(functools.partial(enc.tokenizer, side=direction), texts, True)
        else:
            tok = enc.tokenizer(texts, True, side=direction)
        check_cut(tok, cut, item, truncate, enc.max_length, self.cfg.max_input_chars, direction)
        vecs, n_tokens = await self._compute(tok.ids + ids if ids else tok.ids, field)
        if normalize:
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return vecs, n_tokens, tok.truncated

    async def _embed_chunked(self, enc, texts, field, item, truncate, normalize, chunk_stats, ids):
        """``texts`` in windows combined per post, then the token-id rows ``ids``, through the batcher:
        (float32 (len(texts) + len(ids), dim), tokens, truncated text indices)."""
        from .. import long_posts as lp

        try:
            chunks = lp.split(await self.off_loop(enc.tokenizer.windows, texts, enc.chunk_overlap),
                              enc.max_chunks, truncate, item)
        except ValidationError as exc:
            raise ApiError(422, str(exc), param=field, code="max_chunks", limit=enc.max_chunks) from None
        n = len(chunks.single_ids) + len(ids)  # the rows embedded whole
        vecs, n_tokens = await self._compute(chunks.single_ids + ids + chunks.windows, field)
        out = np.empty((len(texts) + len(ids), vecs.shape[1]), dtype=np.float32)
        single = vecs[:n]
        if normalize:
            single = single / np.maximum(np.linalg.norm(single, axis=1, keepdims=True), 1e-12)
        out[chunks.singles], out[len(texts):] = single[:n - len(ids)], single[n - len(ids):]
        if chunks.windows:
            posts, combined = lp.combine(vecs[n:], chunks, normalize)
            out[posts] = combined
        if chunk_stats is not None:
            chunk_stats.update(chunked=chunks.chunked, windows=len(chunks.windows))
        return out, n_tokens, chunks.truncated

    async def off_loop(self, fn, *args):
        """``fn(*args)`` (tokenization) on a worker thread, ``TOKENIZE_THREADS`` at once: a storm of
        big requests queues here without holding threads, and a request that waits past
        request_timeout_s gets 429 (it used to wait behind every other request's tokenization)."""
        if self._tokenize_slots is None:
            self._tokenize_slots = asyncio.Semaphore(TOKENIZE_THREADS)
        try:
            await asyncio.wait_for(self._tokenize_slots.acquire(), self.cfg.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(429, f"Overloaded: the tokenizer was busy with other requests for request_timeout_s "
                                f"({self.cfg.request_timeout_s:g} s).", type="overloaded", code="tokenizer_busy",
                           headers=retry_after(1)) from None
        work = asyncio.ensure_future(asyncio.to_thread(fn, *args))  # the slot is freed when the thread returns,
        work.add_done_callback(self._thread_done)  # also for a request cancelled meanwhile (its client left)
        return await asyncio.shield(work)

    def _thread_done(self, work: asyncio.Future) -> None:
        self._tokenize_slots.release()
        if not work.cancelled():
            work.exception()  # read here: a cancelled request's error is nobody's to raise

    async def _compute(self, ids: list[list[int]], field: str):
        """Token-id lists through the batcher: (raw float32 (n, dim), tokens); errors as ApiError.

        A request of more tokens than max_queued_tokens, which the queue could never hold at once, is fed
        to it in pieces (consecutive posts, ``_pieces``), each submitted once the one before is computed, so
        it holds at most a piece of the queue and other requests' posts batch between its pieces; the
        batching itself stays the C++ scheduler's. Only the first piece is refused (429) by a full queue: a
        later one waits for room (``_queue``), so the rows already computed are not thrown away. Every piece
        shares the request's one deadline (request_timeout_s from the first submit). Memory: the ids are the
        request's own (no copy); the batcher copies one piece at a time; the rows are written into one (n, dim)
        array."""
        tokens, longest = sum(map(len, ids)), max(map(len, ids))
        limit = self.cfg.max_queued_tokens
        if longest > limit:  # only when max_queued_tokens < max_length: a full-length post never fits
            raise ApiError(413, f"`{field}` holds a post of {longest} tokens, more than the server's "
                                f"max_queued_tokens ({limit}), so it can never be queued. Fix: shorten that post "
                                "(client), or start the server with --max-queued-tokens at least the model's "
                                "max_length (operator).", param=field, code="max_queued_tokens", limit=limit,
                           given=longest)
        pieces = [ids] if tokens <= limit else list(_pieces(ids, max(limit // PIECES_PER_QUEUE, longest)))
        start, out, done = time.monotonic(), None, 0
        for n, piece in enumerate(pieces):
            vecs = await self._submit(piece, field, start, (done, tokens, len(pieces)), later=n > 0)
            if len(pieces) == 1:
                return vecs, tokens
            if out is None:
                out = np.empty((len(ids), vecs.shape[1]), dtype=np.float32)
            out[done:done + len(piece)] = vecs
            done += len(piece)
        return out, tokens

    async def _submit(self, ids, field: str, start: float, progress, later: bool):
        """One submit to the batcher (``_queue``), awaited: float32 (len(ids), dim); its errors as ApiError.
        ``start``: when the request's first piece was submitted (its deadline is start + request_timeout_s)."""
        batches_before = self.batches_done
        fut = await self._queue(ids, field, start, progress, later)
        try:
            vecs = await asyncio.wrap_future(fut)
        except DeadlineExceededError as exc:
            # the batcher notices an expired request when it forms its next batch, i.e. after a
            # model call returns: that call does not show progress if it returned past the deadline
            ended = self.batches_done - batches_before
            if self.last_batch_end > start + self.cfg.request_timeout_s:
                ended -= 1
            self._timed_out(exc, ended > 0, progress)
        except BatcherClosedError:
            raise ApiError(503, "The server is shutting down.", type="server_error", code="shutting_down") from None
        except Exception as exc:  # noqa: BLE001 - the backend failed this request's batch
            self.backend_error = f"{type(exc).__name__}: {exc}"
            log.error("backend failure (answered 503): %s", self.backend_error)
            raise ApiError(503, "The model failed on the batch holding this request; the server log says why.",
                           type="server_error", code="backend_error") from None
        self.backend_error = None
        return vecs

    async def _queue(self, ids, field: str, start: float, progress, later: bool):
        """``batcher.submit`` within the request's deadline: its Future. A full queue answers a request's first
        piece 429 at once (the backpressure clients expect); a ``later`` piece, whose request holds computed rows,
        waits for room instead: woken as a batch leaves the queue (``made_room``), else after a pause that
        doubles from ROOM_POLL_S to ROOM_POLL_MAX_S (a queue emptied by expired or cancelled requests), the event
        loop free meanwhile. Past the deadline: ``_timed_out`` (429 if batches ran meanwhile, else 503)."""
        deadline, batches_before = start + self.cfg.request_timeout_s, self.batches_done
        pause, waited = ROOM_POLL_S, False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:  # no wait: the piece before was computed (the model works) as the deadline passed
                why = "the batcher queue stayed full" if waited else "the deadline passed between two of its pieces"
                self._timed_out(DeadlineExceededError(f"{why}."), not waited or self.batches_done > batches_before,
                                progress)
            try:
                return self.batcher.submit(ids, timeout=left)
            except OverloadedError as exc:
                if not later:
                    raise ApiError(429, f"Overloaded: {exc}", type="overloaded", code="queue_full",
                                   headers=retry_after(self.retry_after_s())) from None
            except BatcherClosedError:
                raise ApiError(503, "The server is shutting down.", type="server_error", code="shutting_down") from None
            except ValidationError as exc:  # the batcher's own checks; the ones above should catch everything first
                raise ApiError(422, f"`{field}`: {exc}", param=field, code="invalid_value") from None
            await self._room(min(pause, left))
            pause, waited = min(2 * pause, ROOM_POLL_MAX_S), True

    def made_room(self) -> None:
        """Wakes the pieces waiting for room in the queue (``_room``); the batcher's thread calls it as a batch
        leaves the queue. Without a waiter: one read."""
        if not self._room_waiters:
            return
        with self._room_lock:
            waiters, self._room_waiters = self._room_waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # that event loop has closed
                pass

    async def _room(self, timeout_s: float) -> None:
        """Returns once a batch left the queue (``made_room``), or after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        waiter = (loop, loop.create_future())
        with self._room_lock:
            self._room_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter[1], timeout_s)
        except asyncio.TimeoutError:
            pass
        finally:
            with self._room_lock:
                if waiter in self._room_waiters:
                    self._room_waiters.remove(waiter)

    def _timed_out(self, exc: Exception, progressed: bool, progress) -> None:
        """Raises the answer to a request whose deadline passed: 429 when batches finished while it
        waited (``progressed``: overload), 503 when none did (a stuck model). ``progress``: (posts computed,
        tokens, pieces)."""
        done, tokens, pieces = progress
        if pieces > 1:  # a request bigger than the queue: say so, and how to avoid it
            exc = (f"{exc} The request's {tokens} tokens were fed to the queue in {pieces} pieces and {done} of its "
                   f"posts were computed within request_timeout_s ({self.cfg.request_timeout_s:g} s). Fix: split the "
                   "request (client), or raise --request-timeout (operator).")
        if progressed:
            # batches finished while it waited: the model works, the server is overloaded (a
            # client's 429, not a server error; a storm used to count these as 5xx)
            raise ApiError(429, f"Overloaded: {exc}", type="overloaded", code="queue_timeout",
                           headers=retry_after(self.retry_after_s())) from None
        # no batch finished while it waited: the model is stuck
        raise ApiError(503, f"Timed out in the queue: {exc}", type="server_error", code="timeout",
                       headers=retry_after(self.retry_after_s())) from None

    def retry_after_s(self) -> float:
        """Seconds until the tokens queued and those of the batch being computed (its posts at the mean tokens
        per post so far) are computed at the rate measured so far (1 before any is measured)."""
        s = self.batcher.stats()
        busy = s["inference_seconds"]["sum"] if "inference_seconds" in s else 0.0  # SerialCore: no histograms
        rate = s["tokens_computed"] / busy if busy > 0 else 0.0
        left = s["queued_tokens"] + s["in_flight_posts"] * s["tokens_computed"] / max(1, s["posts_computed"])
        return left / rate if rate > 0 else 1.0

    async def probe(self) -> bool:
        """After a backend failure: one tiny request through the batcher; True if it worked."""
        try:
            fut = self.batcher.submit(self.encoder.tokenizer(["readiness probe"]).ids, timeout=PROBE_TIMEOUT_S)
            await asyncio.wrap_future(fut)
        except Exception as exc:  # noqa: BLE001
            self.backend_error = f"{type(exc).__name__}: {exc}"
            return False
        self.backend_error = None
        return True

    def info(self) -> dict:
        enc = self.encoder
        d = {"ready": self.ready, "limits": self.cfg.public(), "uptime_s": round(time.time() - self.started, 3)}
        if enc is not None:
            desc = enc.describe()
            if self.batcher is not None:
                desc["batcher"] = self.batcher.implementation
                d["batcher_options"] = self.batcher.options
            d.update(model=enc.model_version, vector_version=self.vector_version(None, self.cfg.long_posts),
                     dim=enc.dim, max_length=enc.max_length,
                     backend=desc.get("backend"), precision=desc.get("precision"),
                     precision_reason=desc.get("precision_reason"), runtime=desc,
                     encodings=encodings.describe(self.default_dim, self.quant_ranges),
                     dimensions=allowed_dims(enc), default_dimensions=self.default_dim)
        if self.load_error:
            d["load_error"] = self.load_error
        return d


def _wake(fut) -> None:
    if not fut.done():  # not timed out meanwhile
        fut.set_result(None)


def _reindexed(item: Callable[[int], str], at: list[int]) -> Callable[[int], str]:
    """``item`` for a sub-list of a request's inputs: its j-th is the request's ``at[j]``-th."""
    return lambda j: item(at[j])


def _pieces(ids: list[list[int]], budget: int):
    """``ids`` as consecutive runs of at most ``budget`` tokens each (a post as long as budget: alone)."""
    piece, n = [], 0
    for row in ids:
        if piece and n + len(row) > budget:
            yield piece
            piece, n = [], 0
        piece.append(row)
        n += len(row)
    if piece:
        yield piece


def _default_encoder(cfg: ServeConfig):
    from ..encoder import Encoder

    return Encoder.from_pretrained(cfg.model, backend=cfg.backend, device=cfg.device, precision=cfg.precision,
                                   long_posts=cfg.long_posts, max_batch_tokens=cfg.max_batch_tokens)
