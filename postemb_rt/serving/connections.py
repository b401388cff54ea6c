"""Connection limits for ``postemb serve`` (uvicorn on asyncio with h11): idle, stalled and slow
clients cannot take the server down, exhaust its file descriptors or flood its log.

uvicorn (0.55) bounds a header's size (``h11_max_incomplete_event_size``) and closes idle
keep-alive connections (``timeout_keep_alive``), but it has no timeout for reading a request's
headers and no cap on connections: its ``limit_concurrency`` answers 503 to every request,
``/health`` included, once the connections reach it, which is exactly what a crowd of stalled
sockets achieves. So, as nginx does (``client_header_timeout``; a full connection table frees
its reusable connections), this module adds, in uvicorn's own extension points (``http=`` a
protocol class, ``loop=`` a loop factory):

- ``GuardedH11Protocol``: every connection still receiving a request (its headers, or a body
  the app has not finished reading) has a deadline: ``header_timeout_s`` for the headers
  (from the connection's start, or on a kept-alive connection from the first byte of its next
  request, which may come up to ``keep_alive_s`` after the previous answer; trickling bytes do not
  extend it; 408 if some bytes came, a plain close if none), then ``body_timeout_s`` plus a
  grace period for the body (the app answers 408 at ``body_timeout_s`` itself). At most
  ``max_connections`` connections: one more closes the oldest connection that is still
  receiving its request, else the oldest whose client has stopped reading its answer (never one
  whose request is being computed or whose answer is flowing); when none is, the new
  connection gets a 503 and is closed. An answer the client stops reading (the transport's
  buffer past its high-water mark, nothing drained) for ``body_timeout_s`` closes the
  connection (nginx's ``send_timeout``): a crowd of clients that send requests and never
  read cannot hold every connection.
- ``FramedH11Connection``: h11's connection, refusing a request that has both ``Content-Length`` and
  ``Transfer-Encoding`` (h11 frames it by the latter and keeps the connection; RFC 9112 6.1 calls it a
  request-smuggling pattern and requires the close): a 400 naming both, and the connection closed, as
  nginx answers it.
- ``loop_factory``: an asyncio loop that accepts at most ``ACCEPT_BATCH`` connections per
  loop turn (asyncio accepts up to the listen backlog, 2048, before any protocol runs, which
  runs past the fd limit at once), and logs "out of file descriptors" once a minute with a
  count instead of once per failed ``accept()`` (Python 3.11 logs every one: 690k lines a
  minute were seen).
- ``configure``: raises the soft ``RLIMIT_NOFILE`` to the hard limit, and caps
  ``max_connections`` at the fd limit less ``FD_RESERVE``, so connections alone never make
  ``accept()`` fail; rate-limits uvicorn's per-request warnings.
"""
from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("postemb_rt.server")

ACCEPT_BATCH = 16  # connections accepted per event-loop turn
FD_RESERVE = 128  # fds kept for the process (model files, threads, log) and the accept batches in flight
H11_MAX_HEADER_BYTES = 16 * 1024  # request line + headers (h11's default, set explicitly): past it, 400
BODY_GRACE_S = 5.0  # the protocol's backstop past body_timeout_s (the app answers 408 first)
LOG_EVERY_S = 60.0  # a repeated warning (fd exhaustion, evictions, bad requests) at most this often


@dataclass
class ConnectionLimits:
    max_connections: int = 2048
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 75.0  # an idle kept-alive connection is closed after it (ServeConfig.keep_alive_timeout_s)


LIMITS = ConnectionLimits()
# counters read by /metrics (postemb_http_connections*): one server per process
STATS = {"open": 0, "evicted": 0, "refused": 0, "header_timeout": 0, "body_timeout": 0, "send_timeout": 0,
         "accept_failed": 0}
_RECEIVING: dict = {}  # connections still receiving a request, oldest first (dicts keep insertion order)
_STALLED: dict = {}  # connections whose client stopped reading its answer (writing paused), oldest first


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (what every process may do); returns the soft
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:  # e.g. a container's fs.nr_open below the hard limit
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, want, exc)
    return soft


def configure(cfg) -> ConnectionLimits:
    """Set this process's connection limits from a ``ServeConfig`` (call before serving).
    ``max_connections`` is capped at the fd limit (raised to the hard limit first) less
    ``FD_RESERVE``; the result is in ``LIMITS``."""
    soft = raise_nofile_limit()
    cap = max_connections = cfg.max_connections
    if soft != resource.RLIM_INFINITY and cap > soft - FD_RESERVE:
        cap = max(16, soft - FD_RESERVE)
        log.warning("max_connections lowered from %d to %d: the open-file limit is %d (ulimit -n); raise it to "
                    "hold more connections", max_connections, cap, soft)
    LIMITS.max_connections, LIMITS.keep_alive_s = cap, cfg.keep_alive_timeout_s
    LIMITS.header_timeout_s, LIMITS.body_timeout_s = cfg.header_timeout_s, cfg.body_timeout_s
    rate_limit = RateLimitFilter()
    for name in ("uvicorn.error", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
            logger.addFilter(rate_limit)
    return LIMITS


def uvicorn_options() -> dict:
    """The uvicorn ``Config`` options that carry these limits (after ``configure``)."""
    return dict(http=GuardedH11Protocol, loop="postemb_rt.serving.connections:loop_factory",
                h11_max_incomplete_event_size=H11_MAX_HEADER_BYTES, timeout_keep_alive=LIMITS.keep_alive_s,
                # a backstop on request tasks (one can outlive its connection when the client leaves);
                # connections themselves stay under max_connections, well below it
                limit_concurrency=2 * LIMITS.max_connections)


class RateLimitFilter(logging.Filter):
    """Lets one record per (logger, message template) through every ``LOG_EVERY_S`` seconds; the
    next one that passes says how many were dropped."""

    def __init__(self):
        super().__init__()
        self._last: dict = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        last, dropped = self._last.get(key, (-LOG_EVERY_S, 0))
        if now - last < LOG_EVERY_S:
            self._last[key] = (last, dropped + 1)
            return False
        self._last[key] = (now, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} more like this in the last {now - last:.0f} s)"
        return True


_warned: dict = {}


def _warn_rarely(key: str, msg: str, *args) -> None:
    now = time.monotonic()
    if now - _warned.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
        _warned[key] = now
        log.warning(msg, *args)


def _raw_error(status: int, reason: str, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 error answer with ``Connection: close``, written outside h11 (which
    cannot answer before a request's headers are complete)."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error" if status < 500 else
                                 "server_error", "param": None, "code": code}}, separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode()
    return head + body


AMBIGUOUS_FRAMING = ("The request has both Content-Length and Transfer-Encoding, two framings of its body that a "
                     "proxy in front may read differently from this server (request smuggling, RFC 9112 6.1); the "
                     "connection is closed. Fix: send one of them (a client library sends one by itself: look for "
                     "a proxy or code that adds the other).")


class FramedH11Connection(h11.Connection):
    """h11's server connection; a request with both Content-Length and Transfer-Encoding is its
    protocol error (uvicorn then answers 400 and closes: ``GuardedH11Protocol.send_400_response``)."""

    framing_error = False

    def next_event(self):
        event = super().next_event()
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}  # h11 lower-cases them
            if b"content-length" in names and b"transfer-encoding" in names:
                self.framing_error = True
                raise h11.RemoteProtocolError(AMBIGUOUS_FRAMING, error_status_hint=400)
        return event


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on receiving each request, a cap on connections and
    unambiguous request framing (see the module docstring)."""

    _phase: str | None = None  # "headers", "body" or None (request received: computing or answering)
    _timer: asyncio.TimerHandle | None = None
    _send_timer: asyncio.TimerHandle | None = None  # while writing is paused (see pause_writing)
    _got_bytes = False
    _answered = False  # an answer was sent: the connection is kept alive between requests

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        size = self.config.h11_max_incomplete_event_size
        self.conn = FramedH11Connection(h11.SERVER, h11.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE if size is None else size)

    def send_400_response(self, msg: str) -> None:
        if not self.conn.framing_error:  # h11's own refusals: uvicorn's answer
            return super().send_400_response(msg)
        self.transport.write(_raw_error(400, "Bad Request", "ambiguous_framing", AMBIGUOUS_FRAMING))
        self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        STATS["open"] += 1
        if STATS["open"] > LIMITS.max_connections and not _evict_oldest():
            STATS["refused"] += 1
            _warn_rarely("refused", "%d connections are open (max_connections) and every one has a request in "
                                    "progress: new connections get 503", LIMITS.max_connections)
            transport.write(_raw_error(503, "Service Unavailable", "max_connections",
                                       f"The server holds max_connections ({LIMITS.max_connections}) connections, "
                                       "each with a request in progress; retry shortly."))
            transport.close()
            return
        self._track()

    def connection_lost(self, exc) -> None:
        STATS["open"] -= 1
        self._set_phase(None)
        self._unstall()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The transport's buffer passed its high-water mark: the client is not reading its answer
        as fast as it is written. If it reads nothing more for body_timeout_s the connection is
        closed (nginx's send_timeout), and meanwhile it is the first to go when connections run out."""
        super().pause_writing()
        _STALLED[self] = None
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(LIMITS.body_timeout_s, self._send_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._unstall()

    def _unstall(self) -> None:
        _STALLED.pop(self, None)
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_stalled(self) -> None:
        self._send_timer = None
        self._unstall()
        if not self.transport.is_closing():
            STATS["send_timeout"] += 1
            _warn_rarely("send_timeout", "closing connections whose client read none of its answer for "
                                         "body_timeout_s (%g s)", LIMITS.body_timeout_s)
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._phase == "headers" and not self._got_bytes and self._answered:
            self._restart_timer(LIMITS.header_timeout_s)  # a kept-alive connection's next request began
        self._got_bytes = True
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        self._answered = True
        super().on_response_complete()
        self._track()

    def _track(self) -> None:
        """Follow h11's view of the client: waiting for headers (IDLE), sending a body (SEND_BODY),
        or done sending its request."""
        if self.transport.is_closing():
            return self._set_phase(None)
        state = self.conn.their_state
        self._set_phase("headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None)

    def _set_phase(self, phase: str | None) -> None:
        if phase == self._phase:
            return  # trickling bytes do not extend a deadline
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = phase
        _RECEIVING.pop(self, None)
        if phase is None:
            return
        _RECEIVING[self] = None  # newest last
        if phase == "headers":
            self._got_bytes = False
            # idle between requests, uvicorn closes it at keep_alive_s (this timer is a backstop); once
            # the next request's first byte comes, it has header_timeout_s (data_received)
            self._restart_timer(LIMITS.keep_alive_s + 1.0 if self._answered else LIMITS.header_timeout_s)
        else:
            self._restart_timer(LIMITS.body_timeout_s + BODY_GRACE_S)

    def _restart_timer(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(seconds, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._phase == "headers" and self._got_bytes:
            STATS["header_timeout"] += 1
            self.transport.write(_raw_error(408, "Request Timeout", "header_timeout",
                                            f"The request headers did not arrive within header_timeout_s "
                                            f"({LIMITS.header_timeout_s:g} s)."))
            self.transport.close()
        elif self._phase == "body":
            STATS["body_timeout"] += 1
            self.transport.abort()
        else:  # an idle connection that never sent a byte
            self.transport.close()
        self._set_phase(None)


def counts() -> dict:
    """``STATS`` and the connections stalled now (``postemb_http_connections_stalled``), for /metrics."""
    return {**STATS, "stalled": len(_STALLED)}


def _evict_oldest() -> bool:
    """Close the oldest connection still receiving its request, else the oldest whose client stopped
    reading its answer; False if there is neither."""
    pool = _RECEIVING or _STALLED
    if not pool:
        return False
    proto = next(iter(pool))
    proto._set_phase(None)
    proto._unstall()
    STATS["evicted"] += 1
    _warn_rarely("evicted", "max_connections (%d) reached: closing the oldest connections still sending their "
                            "request or not reading their answer", LIMITS.max_connections)
    proto.transport.abort()
    return True


class BoundedAcceptLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop, accepting at most ``ACCEPT_BATCH`` connections per turn, so the
    protocols of the connections just accepted run (and close the ones over ``max_connections``)
    before more file descriptors are taken."""

    def _accept_connection(self, protocol_factory, sock, sslcontext=None, server=None, backlog=100, *args,
                           **kwargs):
        return super()._accept_connection(protocol_factory, sock, sslcontext, server, min(backlog, ACCEPT_BATCH),
                                          *args, **kwargs)


def _exception_handler(loop, context) -> None:
    exc = context.get("exception")
    if context.get("message", "").startswith("socket.accept() out of system resource"):
        STATS["accept_failed"] += 1
        _warn_rarely("accept", "accept() failed: %s; new connections wait (the soft open-file limit is %d; "
                               "max_connections is %d)", exc, resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                     LIMITS.max_connections)
        return
    loop.default_exception_handler(context)


def loop_factory() -> asyncio.AbstractEventLoop:
    """uvicorn ``loop=`` factory: a ``BoundedAcceptLoop`` whose accept failures are logged rarely."""
    loop = BoundedAcceptLoop()
    loop.set_exception_handler(_exception_handler)
    return loop
