"""The model side of the near-line worker (``ModelMixin``, a base of ``Worker``): each
micro-batch embedded once per prompt, every model call bounded by ``model_timeout_s`` on one
model thread, and a post that fails the model isolated (the batch split until it is alone;
a probe text tells a failing post from a failing model). The reads and the loop live in
``worker.py``, the Redis writes in ``store.py``.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent import futures

from .. import prompts
from ..errors import PostEmbError, ValidationError
from .events import Post, event_fields
from .store import Stopped

log = logging.getLogger("postemb_rt.nearline")

PROBE_TEXT = "model health probe"  # encoded to tell a failing post from a failing model
DEFAULT_MODEL_TIMEOUT_S = 60.0  # a batch of 64 posts of 32 KiB in chunk mode takes seconds on 2 CPU cores
EXIT_MODEL_TIMEOUT = 3  # `postemb nearline` exit code after a model call ran past --model-timeout


class ModelTimeoutError(PostEmbError):
    """A model call ran past ``model_timeout_s``. The worker stops (its model thread is
    stuck and cannot be killed; the process must exit); its events stay pending."""


class _ModelThread:
    """Runs a worker's model calls on one daemon thread, so the worker can stop waiting for a
    call that hangs: a thread cannot be killed, and a daemon thread does not keep the process
    alive. (``concurrent.futures`` executors join their threads at exit, so a hung call would
    block the very exit a supervisor waits for.) One thread for every call keeps thread-local
    model state (CUDA streams and graphs) in one place."""

    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
                    fut.set_exception(exc)

    def submit(self, fn) -> futures.Future:
        fut: futures.Future = futures.Future()
        self._jobs.put((fn, fut))
        return fut

    def close(self, timeout: float = 10.0) -> None:
        """End the thread after the call in hand and wait for it (at most ``timeout`` s), so that
        nothing it holds (a backend's per-thread inference request) outlives the worker and is
        torn down while the interpreter exits."""
        self._jobs.put(None)
        self._thread.join(timeout)




class ModelMixin:
    """The model calls of :class:`~postemb_rt.nearline.worker.Worker`, which is their only user
    (they read its encoder, prompt, timeout, stats and stop event)."""

    def _check_prompt(self, post: Post) -> tuple[Post | None, str]:
        """(post, "") if the event's ``prompt_name`` is one of the model's prompts, else (None, why)."""
        if self._model_config is None:
            return None, (f"`prompt_name` {post.prompt_name!r}: this worker's encoder has no prompts; "
                          "Fix: publish without prompt_name")
        try:
            prompts.resolve(self._model_config, prompt_name=post.prompt_name)
        except ValidationError as exc:
            return None, f"bad `prompt_name`: {exc}"
        return post, ""

    def prompt_of(self, post: Post) -> str | None:
        """The prompt name ``post`` is embedded with: its event's, else the worker's default
        (None: no prompt)."""
        return post.prompt_name if post.prompt_name is not None else self.prompt_name

    def _embed(self, posts: list[Post]) -> tuple[list, list]:
        """Vectors for posts (None where the post could not be embedded) and the rejected
        entries (event_id, fields, reason) to dead-letter: the posts grouped by prompt
        (:meth:`prompt_of`), one :meth:`_embed_group` (one model call when all goes well) per
        distinct prompt, in the order each prompt first appears."""
        groups: dict[str | None, list[int]] = {}
        for i, p in enumerate(posts):
            groups.setdefault(self.prompt_of(p), []).append(i)
        vectors, rejected = [None] * len(posts), []
        for name, idx in groups.items():
            got, bad = self._embed_group([posts[i] for i in idx], name)
            for i, v in zip(idx, got):
                vectors[i] = v
            rejected += bad
        return vectors, rejected

    def _embed_group(self, posts: list[Post], prompt_name: str | None) -> tuple[list, list]:
        """:meth:`_embed` for posts of one prompt (``prompt_name``).

        A chunk the model rejects (ValidationError) is split at once. Any other failure is
        retried up to ``max_attempts`` times with backoff, then the chunk is split, until
        the failing post is alone. A post that keeps failing alone is dead-lettered only if
        the probe text encodes fine (the post is the culprit); if the probe fails too, the
        model is down for every input, so the call is retried without limit (nothing is
        acknowledged meanwhile) instead of dead-lettering good posts. A call that runs past
        ``model_timeout_s`` raises ModelTimeoutError (the worker stops)."""
        vectors, rejected, todo = [None] * len(posts), [], [(0, len(posts))]
        while todo:
            lo, hi = todo.pop()
            chunk = posts[lo:hi]
            try:
                vectors[lo:hi] = self._encode_bounded(chunk, prompt_name)
                continue
            except ValidationError as exc:
                err, why = exc, "the model rejected it"
            except (Stopped, ModelTimeoutError):
                raise
            except Exception as exc:  # noqa: BLE001 - still failing after max_attempts
                err, why = exc, f"the model failed on it {self.max_attempts} times"
            if hi - lo > 1:
                mid = (lo + hi) // 2
                todo += [(mid, hi), (lo, mid)]
                continue
            if not isinstance(err, ValidationError):
                # alone and still failing: the post, or the model as a whole?
                self._retry("encode (probe)", lambda: self._encode_once([PROBE_TEXT], []), [p.event_id for p in posts],
                            retry_if=lambda e: not isinstance(e, ModelTimeoutError))
                try:
                    # the model is fine now: one last try
                    vectors[lo:hi] = self._encode_once([p.text for p in chunk], chunk, prompt_name)
                    continue
                except ModelTimeoutError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    err = exc
            p = posts[lo]
            rejected.append((p.event_id, event_fields(p), f"{why}: {type(err).__name__}: {err}"[:1000]))
        return vectors, rejected

    def _encode_once(self, texts: list[str], posts: list[Post], prompt_name: str | None = None) -> list:
        """encoder.encode(texts, prompt_name=prompt_name) as a list of float32 (dim,) rows;
        bounded by model_timeout_s (on the worker's model thread) when that is set. posts: what
        the texts are of (for the error message; [] for the probe). prompt_name None: no
        prompt_name argument (the model's default prompt, which the worker's default already
        names when there is one)."""
        kw = {"prompt_name": prompt_name} if prompt_name is not None else {}
        if self.truncate_dim is not None:
            kw["truncate_dim"] = self.truncate_dim

        def call():
            return list(self.encoder.encode(texts, batch_size=len(texts), **kw))

        t = time.perf_counter()
        try:
            if not self.model_timeout_s:
                return call()
            if self._model is None:
                self._model = _ModelThread(f"postemb-model-{self.consumer}")
            fut = self._model.submit(call)
            self._wait_beating(fut)
            if not fut.done():
                self._model_hung = True
                self.stats.model_timeouts += 1
                what = (f"{len(posts)} post(s) (post ids {[p.post_id for p in posts][:8]}, event ids "
                        f"{[p.event_id for p in posts][:8]})" if posts else "the probe text")
                msg = (f"the model did not return within `model_timeout_s` ({self.model_timeout_s} s) on {what}. "
                       f"The worker stops; its events stay pending and are retried one at a time, and a post that "
                       f"hangs the model on every try is dead-lettered after max_deliveries ({self.max_deliveries}). "
                       f"Fix: if the model is merely slow, raise --model-timeout.")
                log.error(msg)
                raise ModelTimeoutError(msg)
            return fut.result()
        finally:
            self.stats.encode_s += time.perf_counter() - t

    def _wait_beating(self, fut) -> None:
        """Wait for the model call ``fut`` up to ``model_timeout_s``, sending the heartbeat every ``heartbeat_s``
        meanwhile: a call longer than the heartbeat's life (5 beats, 10 s by default; a batch of long posts on a
        busy CPU) dropped a live worker from ``--stats``. A heartbeat that fails here is only logged (the loop's
        next one raises as before); one against a frozen Redis can hold the wait up to its socket timeout."""
        deadline = time.monotonic() + self.model_timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if futures.wait([fut], timeout=min(left, self.heartbeat_s)).done:
                return
            try:
                self._heartbeat()
            except Exception as exc:  # observability never fails a model call
                log.debug("heartbeat during a model call failed: %s: %s", type(exc).__name__, exc)

    def _encode_bounded(self, chunk: list[Post], prompt_name: str | None = None) -> list:
        """encode(chunk), retried up to max_attempts times (backoff 50 ms .. 5 s) on any error
        but a ValidationError or a timeout; the last error is raised. Raises Stopped on shutdown."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._encode_once([p.text for p in chunk], chunk, prompt_name)
            except (ValidationError, ModelTimeoutError):
                raise
            except Exception as exc:  # noqa: BLE001
                self.stats.retries += 1  # retried here, or split by the caller
                if attempt == self.max_attempts:
                    raise
                wait = self._wait_s(attempt)
                log.warning("encode failed for %d events (attempt %d/%d: %s: %s); retry in %.2f s", len(chunk),
                            attempt, self.max_attempts, type(exc).__name__, exc, wait)
                if self.stop_event.wait(wait):
                    raise Stopped() from None
        raise AssertionError("unreachable")
