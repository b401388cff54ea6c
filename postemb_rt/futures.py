"""concurrent.futures helpers for the batcher: resolving a caller's Future from the scheduler thread
(``settle``), one exception object per caller of a failed batch (``own_copy``), and one Future for
several (``gather``: a chunked post's windows, a request's parts)."""
from __future__ import annotations

import copy
import logging
import threading
from concurrent.futures import Future, InvalidStateError

from .errors import BatchFailedError

log = logging.getLogger("postemb_rt")


class SchedulerThread:
    """Which thread runs a batcher's callbacks: set by the batcher from its first callback."""

    __slots__ = ("ident",)

    def __init__(self) -> None:
        self.ident: int | None = None


class BatcherFuture(Future):
    """The concurrent.futures.Future of one batcher request, or of several (``gather``: ``parts``). Its
    done-callbacks run on a batcher's thread; ``result()`` or ``exception()`` there, for a request not
    computed yet by that very thread, would wait for it for ever (and ``close()`` with it), so they raise
    RuntimeError instead."""

    def __init__(self, scheduler: SchedulerThread | None = None, parts: tuple[Future, ...] = ()) -> None:
        super().__init__()
        self._scheduler, self._parts = scheduler, parts

    def _waits_for_this_thread(self) -> bool:
        """Not done, and it (or a part not done yet) is computed by the calling thread's batcher."""
        if self.done():
            return False
        if self._scheduler is not None and self._scheduler.ident == threading.get_ident():
            return True
        return any(isinstance(p, BatcherFuture) and p._waits_for_this_thread() for p in self._parts)

    def result(self, timeout=None):
        self._refuse_to_wait_for_itself("result")
        return super().result(timeout)

    def exception(self, timeout=None):
        self._refuse_to_wait_for_itself("exception")
        return super().exception(timeout)

    def _refuse_to_wait_for_itself(self, method: str) -> None:
        if self._waits_for_this_thread():
            raise RuntimeError(
                f"{method}() was called on the batcher's own thread (in a done-callback) for a request not "
                "computed yet: it would wait for ever, as this thread is the one computing it. Fix: chain the "
                "work with add_done_callback, or wait for the result on another thread.")


def settle(fut: Future, result=None, exc: BaseException | None = None) -> None:
    """Resolve ``fut`` with ``exc`` if given, else ``result``, and never raise: a future cancelled
    meanwhile stays cancelled, and a done-callback that raises a BaseException (concurrent.futures
    guards callbacks against Exception only) is logged, so the caller can go on resolving the
    other futures of its batch."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except InvalidStateError:  # cancelled meanwhile
        pass
    except BaseException:  # noqa: BLE001 - a caller's done-callback; the other callers still wait
        log.exception("postemb_rt: a done-callback of a batcher future raised; the batcher goes on")


def own_copy(exc: BaseException) -> BaseException:
    """A copy of ``exc`` for one future: every caller of a failed batch raises its own object,
    so threads re-raising at once never rewrite one shared ``__traceback__``. Same type, args,
    attributes, cause and original traceback; an exception that cannot be copied becomes a
    BatchFailedError caused by it."""
    try:
        new = copy.copy(exc)
    except Exception:  # noqa: BLE001 - a constructor that does not take its own args back
        new = None
    if new is None or new is exc or type(new) is not type(exc):
        new = BatchFailedError(f"{type(exc).__name__}: {exc}")
        new.__cause__ = exc
    else:
        new.__cause__, new.__context__ = exc.__cause__, exc.__context__
        new.__suppress_context__ = exc.__suppress_context__
    return new.with_traceback(exc.__traceback__)


def gather(parts: list[Future], build) -> Future:
    """A Future of ``build([f.result() for f in parts])``, failing with the first part's error.
    Cancelling it cancels the parts (their queued posts are dropped, as for a plain request). Its
    ``result()`` on a batcher's thread, while a part waits for that thread, raises as a part's would."""
    out: Future = BatcherFuture(parts=tuple(parts))
    left = [len(parts)]
    lock = threading.Lock()

    def done(_):
        with lock:
            left[0] -= 1
            if left[0]:
                return
        if out.cancelled():
            return
        try:
            result = build([f.result() for f in parts])
        except BaseException as exc:  # a part's error (deadline, closed, backend) or the combine's
            settle(out, exc=exc)
        else:
            settle(out, result)

    def cancel_parts(fut: Future) -> None:
        if fut.cancelled():
            for f in parts:
                f.cancel()

    out.add_done_callback(cancel_parts)
    for f in parts:
        f.add_done_callback(done)
    return out
