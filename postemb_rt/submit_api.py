"""``Encoder``'s face for concurrent callers: ``submit`` / ``aencode`` through one shared dynamic
batcher (``postemb_rt.batching.DynamicBatcher``), started by the first call or by ``start_batcher``.

A mixin of ``Encoder`` (it reads the encoder's tokenizer, backend, model and batcher lock); kept
apart so that ``encoder.py`` stays within the module size limit.
"""
from __future__ import annotations

import asyncio
import functools
import threading
from concurrent.futures import Future

import numpy as np

from . import encode_options as eo, forks, long_posts as lp, prompts
from .batcher_args import check_timeout
from .batching import DynamicBatcher
from .errors import BatcherClosedError, ValidationError
from .futures import gather


class SubmitAPI:
    """``submit``, ``aencode``, ``start_batcher`` and ``batcher`` of ``Encoder``."""

    def start_batcher(self, **options) -> DynamicBatcher:
        """Start the dynamic batcher behind ``submit``/``aencode`` with non-default options
        (see ``postemb_rt.batching.DynamicBatcher``: max_batch_size, max_wait_us,
        max_queued_tokens, batch_overhead_tokens, max_batch_tokens). The first ``submit`` starts
        it with the defaults; raises ValidationError if it is already started."""
        with self._batcher_lock:
            if self._batcher is not None:
                raise ValidationError("the batcher is already started; call start_batcher() before submit().")
            return self._start_batcher_locked(options)

    def _start_batcher_locked(self, options: dict) -> DynamicBatcher:
        if self._batcher_closed:
            raise BatcherClosedError("this Encoder is closed; submit() is no longer accepted.")
        default_queue = max(65536, 16 * self.max_batch_tokens)
        opts = {"max_batch_tokens": self.max_batch_tokens, "max_queued_tokens": default_queue,
                "pad_id": self.tokenizer.pad_id,
                # submit refuses token ids past the vocabulary, as the tokenizer's decode (the server's /decode) does
                "vocab_size": self.tokenizer.vocab_size, **options}
        eo.check_max_batch_tokens(options.get("max_batch_tokens"), self.max_length)
        queue, batch = opts["max_queued_tokens"], opts["max_batch_tokens"]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (queue, batch)) and queue < batch:
            raise ValidationError(f"`max_queued_tokens` must be >= max_batch_tokens ({batch}): a smaller queue never "
                                  f"fills a batch. Given: {queue}. Fix: leave it out (default {default_queue}), or "
                                  "lower max_batch_tokens with it.")
        embed = functools.partial(self.backend.embed, normalize=self.model.config.normalize)
        self._batcher = DynamicBatcher(embed, **opts)  # checks the other options
        forks.holds_threads(self)  # a forked child starts its own
        self._batcher_opts = opts
        return self._batcher

    def _after_fork_in_child(self) -> None:
        """postemb_rt.forks: the batchers' threads stayed in the parent; the next submit() starts this process's."""
        self._batcher_lock = threading.Lock()
        self._batcher = self._raw_batcher = None

    @property
    def batcher(self) -> DynamicBatcher:
        """The dynamic batcher behind ``submit`` (started on first use); ``.stats()`` for metrics."""
        with self._batcher_lock:
            return self._batcher or self._start_batcher_locked({})

    def _window_batcher(self) -> DynamicBatcher:
        """Chunk mode's second batcher (same options): windows of long posts, raw vectors, which
        submit() combines; short posts stay on ``batcher``, so they match truncate mode exactly."""
        self.batcher  # noqa: B018 -- started first: the window batcher copies its options
        with self._batcher_lock:
            if self._raw_batcher is None:
                if self._batcher_closed:
                    raise BatcherClosedError("this Encoder is closed; submit() is no longer accepted.")
                self._raw_batcher = DynamicBatcher(functools.partial(self.backend.embed, normalize=False),
                                                   **self._batcher_opts)
            return self._raw_batcher

    def submit(self, texts, timeout: float | None = None, truncate: bool = True,
               long_posts: str | None = None, prompt_name: str | None = None, prompt: str | None = None) -> Future:
        """Embed texts through the shared dynamic batcher; for many concurrent callers.

        texts: a str or a list of str (a few posts; big lists are better served by ``encode``).
        timeout: seconds > 0 (None: no deadline); a request not computed by then fails with
            DeadlineExceededError.
        long_posts: "truncate" or "chunk" for this call (default: the encoder's).
        prompt_name / prompt: as ``encode`` (default: the model's default prompt, if any).
        Returns a ``concurrent.futures.Future`` of float32 (len(texts), dim) in input order, or
        (dim,) for a single str; normalised as the model says (``encode``'s default). Tokenizes on
        the calling thread, never waits for the model. Raises at once: ValidationError,
        OverloadedError (queue full: retry later), BatcherClosedError (after ``close()``).
        """
        check_timeout(timeout)  # before anything else: an empty request is refused alike
        single, k = isinstance(texts, str), self.truncate_dim  # k: the prefix now, not when the batch returns
        text = prompts.resolve(self.model.config, prompt=prompt, prompt_name=prompt_name)
        texts = prompts.apply(self._check_texts([texts] if single else texts), text)
        mode = lp.check_mode(long_posts or self.long_posts)
        if not texts:
            fut: Future = Future()
            fut.set_result(np.empty((0, k or self.dim), dtype=np.float32))
            return fut
        if mode == "truncate":
            tok = self.tokenizer(texts, truncate=truncate, prompt=text)
            self._warn_truncated(len(tok.truncated), len(texts), mode)
            fut = self.batcher.submit(tok.ids, timeout=timeout, squeeze=single)
        else:
            chunks = lp.split(self.tokenizer.windows(texts, self.chunk_overlap), self.max_chunks, truncate)
            self._warn_truncated(len(chunks.truncated), len(texts), mode)
            if not chunks.windows:
                fut = self.batcher.submit(chunks.single_ids, timeout=timeout, squeeze=single)
            else:
                parts = [self._window_batcher().submit(chunks.windows, timeout=timeout)]
                if chunks.singles:
                    parts.append(self.batcher.submit(chunks.single_ids, timeout=timeout))
                fut = gather(parts, lambda res: self._assemble(res, chunks, len(texts), single))
        return fut if k is None else gather([fut], lambda res: self._prefix(res[0], k))

    def _assemble(self, results, chunks, n: int, single: bool) -> np.ndarray:
        out = np.empty((n, self.dim), dtype=np.float32)
        posts, combined = lp.combine(results[0], chunks, self.model.config.normalize)
        out[posts] = combined
        if chunks.singles:
            out[chunks.singles] = results[1]
        return out[0] if single else out

    async def aencode(self, texts, timeout: float | None = None, truncate: bool = True,
                      long_posts: str | None = None, prompt_name: str | None = None,
                      prompt: str | None = None) -> np.ndarray:
        """``await enc.aencode(texts)``: ``submit`` for asyncio; the event loop never blocks on
        the model (only tokenization of ``texts`` runs on the loop's thread)."""
        return await asyncio.wrap_future(self.submit(texts, timeout=timeout, truncate=truncate,
                                                     long_posts=long_posts, prompt_name=prompt_name, prompt=prompt))

