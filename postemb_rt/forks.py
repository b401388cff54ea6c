"""What a forked child (``os.fork``, multiprocessing's "fork" start method, the default on Linux
before Python 3.14, gunicorn ``--preload``, Celery's prefork pool) does with what its parent
started. Threads do not survive a fork, and a lock that one of them held stays held in the child.

- A ``DynamicBatcher`` (``Encoder.submit`` / ``aencode``, the server's) lost its scheduler thread:
  the child's copy is abandoned, never closed (closing waits for that thread: a child that had
  merely inherited a started batcher hung at exit) and its C++ core is leaked. Its ``submit``
  raises ``BatcherClosedError``; an ``Encoder`` forgets it and starts a new batcher in the child
  on its next ``submit`` (before, that ``submit``'s future never resolved).
- torch's OpenMP pool (GNU libgomp) does not survive a fork: a parallel region in the child hangs
  for ever (plain sentence-transformers too). Once torch has run a model here, a forked child runs
  torch with one thread, as torch's own DataLoader workers do.

onnxruntime and OpenVINO models compute in a forked child as they are, but their teardown at a normal
exit can hang there (plain onnxruntime's does): multiprocessing's workers end with ``os._exit`` and are
fine (README "Forked processes"). The other start methods ("spawn", "forkserver") start a fresh
interpreter and need none of this.
"""
from __future__ import annotations

import os
import sys
import weakref

from .errors import BatcherClosedError

ABANDONED = ("this batcher was inherited through fork(): its scheduler thread stayed in the parent process. "
             "Fix: use the Encoder (its submit() starts a new batcher in this process), or start a new "
             "DynamicBatcher here.")
_HOLDERS: "weakref.WeakSet" = weakref.WeakSet()  # batchers and encoders: each forgets its threads in a child
_torch_ran = False
_torch_one_thread = False  # a forked child of a process where torch ran (torch_on_one_thread)


class Abandoned:
    """The core of a batcher inherited through fork(): refuses work, holds nothing."""

    closed = True

    def submit(self, *args, **kwargs):
        raise BatcherClosedError(ABANDONED)

    def stats(self):
        raise BatcherClosedError(ABANDONED)

    def cancel(self, ticket) -> bool:
        return False

    def close(self, drain: bool = True) -> None:
        pass


def holds_threads(obj) -> None:
    """``obj`` (a DynamicBatcher, an Encoder that started one) has ``_after_fork_in_child()``, called in a
    forked child before anything else runs there."""
    _HOLDERS.add(obj)


def torch_ran() -> None:
    """Called by the torch backend once it has computed: a forked child then runs torch with one thread."""
    global _torch_ran
    _torch_ran = True


def torch_on_one_thread() -> bool:
    """True in a forked child of a process where torch ran: torch must stay on the one thread it was set to."""
    return _torch_one_thread


def _after_fork_in_child() -> None:
    global _torch_one_thread
    for obj in list(_HOLDERS):
        obj._after_fork_in_child()
    if _torch_ran and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
        _torch_one_thread = True


os.register_at_fork(after_in_child=_after_fork_in_child)
