"""Fault and abuse: stalled, idle and slow clients against a real server at a low open-file limit
(``RLIMIT_NOFILE`` 1024, soft and hard, as ``ulimit -n 1024`` gives), on 127.0.0.1 only. Every
loop is bounded and every socket is closed at the end."""
import resource
import socket
import threading
import time

import pytest

from tests.server.conftest import API_KEY, ServerProc, require_serve_extra, serve_argv

httpx = require_serve_extra()

FD_LIMIT = 1024
STALLED = 2000
HEADER_TIMEOUT_S = 4.0
BODY_TIMEOUT_S = 3.0
KEEP_ALIVE_S = 6.0  # above HEADER_TIMEOUT_S: a proxy's pooled connection idles past the header timeout
PARTIAL_HEADERS = b"GET /health HTTP/1.1\r\nHost: x\r\nX-a: "
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _low_fd_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.fixture(scope="module")
def servers():
    """This module's two servers, started together: a server prints its address before it loads its
    model, so each loads while the other does. "abuse" (max_concurrent_requests 2, the timeouts above,
    1,024 files) and "unread" (max_connections 5, for the clients that never read). Both are waited
    for (GET /ready), then stopped with SIGTERM at the module's end, each checked to exit 0."""
    abuse = serve_argv("--max-concurrent-requests", "2", "--header-timeout", str(HEADER_TIMEOUT_S),
                       "--body-timeout", str(BODY_TIMEOUT_S), "--keep-alive-timeout", str(KEEP_ALIVE_S))
    started = {"abuse": ServerProc(abuse, env={"POSTEMB_API_KEY": API_KEY}, preexec_fn=_low_fd_limit)}
    try:
        started["unread"] = ServerProc(serve_argv("--max-connections", "5", "--body-timeout", str(BODY_TIMEOUT_S)))
        for srv in started.values():
            srv.wait_ready()
        yield started
    finally:
        codes = {name: srv.stop() for name, srv in started.items()}
    for name, rc in codes.items():
        assert rc == 0, f"postemb serve ({name}) exited {rc} after SIGTERM: {''.join(started[name].lines)[-3000:]}"


@pytest.fixture(scope="module")
def abuse_server(servers):
    return servers["abuse"]


def _port(srv) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def _log_bytes(srv) -> int:
    return sum(len(line) for line in list(srv.lines))


def _metric(srv, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    text = httpx.get(srv.url + "/metrics", headers=AUTH, timeout=10).text
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} " if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _client_fds(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= need, (
        f"this test opens {need} sockets; the hard open-file limit is {hard}. Fix: ulimit -Hn {need}")


def _connect(port: int, first: bytes = b"") -> socket.socket | None:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if first:
            s.sendall(first)
        return s
    except OSError:  # closed by the server already (it holds at most max_connections)
        return None


def _status(s: socket.socket, timeout: float) -> int | None:
    """The status of the answer on ``s`` within ``timeout`` s; None if none came, 0 if closed."""
    s.settimeout(timeout)
    try:
        line = s.makefile("rb").readline()
    except (TimeoutError, socket.timeout):
        return None
    except OSError:
        return 0
    return int(line.split()[1]) if line else 0


def test_2000_stalled_sockets_at_1024_fds_leave_probes_and_embeddings_answering(abuse_server):
    """2,000 sockets that each send half a header and stop, against a server allowed 1,024
    files: /health, /ready and /metrics answer in < 1 s throughout, an embedding request succeeds within 2 s while
    they are held, and the log grows by < 1 MB (no EMFILE flood)."""
    _client_fds(STALLED + 100)
    srv, port = abuse_server, _port(abuse_server)
    log_before = _log_bytes(srv)
    probes, stop = [], threading.Event()

    def probe():
        paths = ("/health", "/ready", "/metrics")
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                path = paths[len(probes) % 3]
                t = time.perf_counter()
                try:
                    code = c.get(srv.url + path, headers={"Connection": "close", **AUTH}).status_code
                except httpx.TransportError as exc:
                    code = type(exc).__name__
                probes.append((path, code, time.perf_counter() - t))
                time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    stalled = []
    try:
        for _ in range(STALLED):
            stalled.append(_connect(port, PARTIAL_HEADERS))
        t = time.perf_counter()
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": ["a post while 2,000 sockets stall"]},
                       headers=AUTH, timeout=10)
        embed_s = time.perf_counter() - t
        time.sleep(1.0)  # keep probing while they are held
    finally:
        stop.set()
        prober.join(10)
        for s in stalled:
            if s is not None:
                s.close()
    assert r.status_code == 200 and embed_s < 2.0, (r.status_code, r.text[:300], embed_s)
    assert len(probes) >= 6
    slow = [(path, code, round(s, 3)) for path, code, s in probes if code != 200 or s >= 1.0]
    assert not slow, f"{len(slow)} of {len(probes)} probes failed or took >= 1 s: {slow[:10]}"
    assert _metric(srv, "postemb_http_connections_closed_total", reason="evicted") > 0  # the cap was reached
    grown = _log_bytes(srv) - log_before
    assert grown < 1_000_000, f"the log grew by {grown} bytes: {''.join(srv.lines)[-2000:]}"
    assert httpx.get(srv.url + "/ready", timeout=5).status_code == 200


def test_slow_bodies_hold_no_slot_and_time_out_with_408(abuse_server):
    """max_concurrent_requests is 2: 2 (then 200) clients that send headers and part of a body
    hold no compute slot, so a normal request is served at once; each slow one gets 408
    body_timeout after body_timeout_s, and its connection is closed."""
    srv, port = abuse_server, _port(abuse_server)
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"input\": [\"slow").encode()
    for n in (2, 200):
        slow = [_connect(port, head) for _ in range(n)]
        try:
            assert all(s is not None for s in slow)
            time.sleep(0.2)
            r = httpx.post(srv.url + "/v1/embeddings", json={"input": "served at once"}, headers=AUTH, timeout=10)
            assert r.status_code == 200, r.text[:300]
            codes = [_status(s, BODY_TIMEOUT_S + 5) for s in slow]
            assert codes == [408] * n, sorted(set(codes), key=str)
        finally:
            for s in slow:
                s.close()
    assert _metric(srv, "postemb_http_requests_in_flight") == 0


def test_header_timeout_answers_408_and_closes_idle_connections(abuse_server):
    port = _port(abuse_server)
    partial, idle = _connect(port, PARTIAL_HEADERS), _connect(port)
    trickle = _connect(port, b"GET /hea")
    try:
        t = time.perf_counter()
        for _ in range(int(HEADER_TIMEOUT_S) + 2):  # bytes every second do not extend the deadline
            time.sleep(1)
            try:
                trickle.sendall(b"l")
            except OSError:
                break
        assert _status(trickle, 5) in (408, 0)
        assert _status(partial, 5) == 408
        idle.settimeout(5)
        assert idle.recv(100) == b""  # closed without an answer: it never sent a byte
        assert time.perf_counter() - t < HEADER_TIMEOUT_S + 6
    finally:
        for s in (partial, idle, trickle):
            s.close()
    assert _metric(abuse_server, "postemb_http_connections_closed_total", reason="header_timeout") >= 2


def _health(s: socket.socket) -> int:
    """GET /health on the kept-alive ``s``; its status, the answer read whole (0: closed)."""
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(10)
    f = s.makefile("rb")
    status, length = f.readline(), 0
    while (line := f.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    f.read(length)
    return int(status.split()[1]) if status else 0


def test_keep_alive_timeout_holds_idle_connections_past_the_header_timeout_then_closes_them(abuse_server):
    port = _port(abuse_server)
    kept, slow = _connect(port), _connect(port)
    try:
        assert _health(kept) == 200 and _health(slow) == 200
        time.sleep(HEADER_TIMEOUT_S + 1)  # idle past the header timeout, within the keep-alive timeout
        assert _health(kept) == 200  # the same connection: it was kept
        t = time.perf_counter()
        slow.sendall(PARTIAL_HEADERS)  # the next request's headers get header_timeout_s from their first byte
        assert _status(slow, HEADER_TIMEOUT_S + 5) == 408
        assert time.perf_counter() - t > HEADER_TIMEOUT_S - 1
        kept.settimeout(KEEP_ALIVE_S + 5)
        assert kept.recv(100) == b""  # idle for the keep-alive timeout: closed without an answer
        assert time.perf_counter() - t > KEEP_ALIVE_S - 1
    finally:
        kept.close()
        slow.close()


def test_clients_that_never_read_their_answers_cannot_hold_every_connection(servers):
    """At max_connections 5, five clients each pipeline six requests with ~1 MB answers and read
    nothing (more than the kernel's socket buffers hold): their connections show as stalled, /health
    still answers (a stalled connection is evicted for it), and after body_timeout_s every stalled
    one is closed (send_timeout). Before, they held every connection until they left, and every new
    one, probes included, got 503."""
    body = '{"input": [' + ",".join(['"x"'] * 128) + "]}"  # 128 x 384 floats: about 1 MB of JSON back
    request = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
    srv = servers["unread"]  # max_connections 5, body_timeout_s BODY_TIMEOUT_S
    port, stalled = _port(srv), []
    try:
        for _ in range(5):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
            s.connect(("127.0.0.1", port))
            s.sendall(request * 6)
            stalled.append(s)
        deadline = time.monotonic() + 30  # a scrape takes a slot: it evicts one of the five once all stall
        while _metric(srv, "postemb_http_connections_stalled") < 4:
            assert time.monotonic() < deadline, "the clients' answers never stalled"
            time.sleep(0.2)
        probe = httpx.get(srv.url + "/health", timeout=5, headers={"Connection": "close"})
        assert probe.status_code == 200, probe.text[:300]
        assert _metric(srv, "postemb_http_connections_closed_total", reason="evicted") >= 1
        deadline = time.monotonic() + BODY_TIMEOUT_S + 10
        while _metric(srv, "postemb_http_connections_closed_total", reason="send_timeout") < 1:
            assert time.monotonic() < deadline, "no stalled connection was closed after body_timeout_s"
            time.sleep(0.5)
        deadline = time.monotonic() + BODY_TIMEOUT_S + 10
        while _metric(srv, "postemb_http_connections") > 1 or _metric(srv, "postemb_http_connections_stalled"):
            assert time.monotonic() < deadline, "stalled connections are still open"  # 1: the scrape's own
            time.sleep(0.5)
    finally:
        for s in stalled:
            s.close()
