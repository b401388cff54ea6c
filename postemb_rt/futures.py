"""Combining concurrent.futures: one Future for several (a chunked post's windows, a request's parts)."""
from __future__ import annotations

import threading
from concurrent.futures import Future


def gather(parts: list[Future], build) -> Future:
    """A Future of ``build([f.result() for f in parts])``, failing with the first part's error."""
    out: Future = Future()
    left = [len(parts)]
    lock = threading.Lock()

    def done(_):
        with lock:
            left[0] -= 1
            if left[0]:
                return
        try:
            out.set_result(build([f.result() for f in parts]))
        except BaseException as exc:  # a part's error (deadline, closed, backend) or the combine's
            out.set_exception(exc)

    for f in parts:
        f.add_done_callback(done)
    return out
