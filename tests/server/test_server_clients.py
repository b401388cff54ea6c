"""What real clients do besides asking: give up on a request (a timeout, Ctrl-C, the `openai` client's
retry after its timeout), which must not cost the model anything more; retry a 429 after its Retry-After."""
import json
import socket
import threading
import time

import pytest

from tests.server.conftest import ServerProc, fault_argv, ready_until_done, require_serve_extra
from tests.server.test_server_limits import metric, wait_for

httpx = require_serve_extra()
openai = pytest.importorskip("openai", reason="the [test] extra installs openai")

MAX_CONCURRENT = 2
LONG = "word " * 300  # > 256 tokens: max_length tokens each


@pytest.fixture(scope="module")
def fault(tmp_path_factory):
    """(server, fault_dir, httpx.Client): the fault-injecting server (fault_server.py), no API key, at most
    MAX_CONCURRENT requests computed at once."""
    fault_dir = tmp_path_factory.mktemp("faults")
    for srv in ready_until_done(ServerProc(fault_argv(fault_dir, f"--max-concurrent-requests={MAX_CONCURRENT}"))):
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            yield srv, fault_dir, c


def _send_and_leave(url: str, path: str, body: dict) -> None:
    """Sends one request on a raw socket, then closes it without reading the answer: a client that left."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n".encode() + data)


@pytest.mark.parametrize("path,field", [("/v1/embeddings", "input"), ("/embed", "inputs"), ("/embed_full", "inputs")])
def test_a_request_whose_client_left_is_dropped_from_the_queue_and_counted_499(fault, path, field):
    """The model is held on a first request while a second one waits in the queue; that second client
    disconnects. Its posts leave the queue (cancelled, never computed) and it counts as 499, not 200."""
    srv, fault_dir, c = fault
    cancelled = metric(c, "postemb_batcher_requests_cancelled_total")
    computed = metric(c, "postemb_batcher_posts_computed_total")
    left_499 = metric(c, "postemb_http_requests_total", route=path, status="499")
    (fault_dir / "hold").touch()
    first = threading.Thread(target=lambda: c.post("/embed_full", json={"inputs": ["holds the model"]}))
    try:
        first.start()
        wait_for(lambda: (fault_dir / "held").exists(), 60, "the first request to reach the held model")
        _send_and_leave(srv.url, path, {field: [f"abandoned post {i}" for i in range(8)]})
        wait_for(lambda: metric(c, "postemb_batcher_requests_cancelled_total") == cancelled + 1, 10,
                 "the abandoned request to be cancelled in the batcher")
    finally:
        (fault_dir / "hold").unlink()
        first.join(60)
    wait_for(lambda: metric(c, "postemb_http_requests_total", route=path, status="499") == left_499 + 1, 10,
             "the abandoned request to be counted as 499")
    time.sleep(0.2)  # a batch that would still compute the abandoned posts has had time to start
    assert metric(c, "postemb_batcher_queued_posts") == 0
    assert metric(c, "postemb_batcher_posts_computed_total") == computed + 1  # the first request's post only
    assert c.post(path, json={field: ["served after"]}).status_code == 200
    assert "Traceback" not in "".join(srv.lines)


def test_a_429_for_max_concurrent_requests_says_when_the_work_in_progress_will_be_done(fault):
    """Both compute slots are taken: 8 full-length posts (2,048 tokens) in the batch on the held model, one
    short post queued. A third request is refused (429 max_concurrent_requests) with a Retry-After that
    counts that work at the measured rate (at most ~1,000 tokens/s here: a calibration batch is slowed to
    2 s): a fixed "1", or the queue alone (the short post), made the openai client spend its two retries
    in 2 s while the work in progress took longer, and raise RateLimitError."""
    srv, fault_dir, c = fault
    (fault_dir / "slow").write_text("2")
    try:
        assert c.post("/embed_full", json={"inputs": [LONG] * 8}).status_code == 200
    finally:
        (fault_dir / "slow").unlink()
    (fault_dir / "hold").touch()
    threads = [threading.Thread(target=lambda: c.post("/embed_full", json={"inputs": [LONG] * 8})),
               threading.Thread(target=lambda: c.post("/embed_full", json={"inputs": ["queued"]}))]
    try:
        threads[0].start()
        wait_for(lambda: (fault_dir / "held").exists(), 60, "the first request to reach the held model")
        threads[1].start()
        wait_for(lambda: metric(c, "postemb_batcher_queued_posts") == 1, 30, "the second to be queued")
        assert metric(c, "postemb_batcher_in_flight_posts") == 8
        oa = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.RateLimitError) as refused:
            oa.embeddings.create(model="m", input="a third request")
    finally:
        (fault_dir / "hold").unlink()
        for t in threads:
            t.join(120)
    headers = refused.value.response.headers
    assert refused.value.code == "max_concurrent_requests", refused.value.body
    assert 2 <= int(headers["Retry-After"]) <= 60, headers
    assert int(headers["Retry-After"]) - 1 < int(headers["retry-after-ms"]) / 1000 <= int(headers["Retry-After"])


def test_a_request_cancelled_while_tokenized_keeps_its_tokenizer_slot_until_the_thread_is_done():
    """A client that leaves cancels its request, but not the tokenizer thread already running for it: the slot
    (one of TOKENIZE_THREADS) stays taken until that thread returns. Released at the cancel, clients that send
    big bodies and leave at once would each start one more thread (the executor queueing their texts without
    bound, past the admission limits, which a cancelled request no longer holds)."""
    import asyncio

    from postemb_rt.serving.config import ServeConfig
    from postemb_rt.serving.runtime import TOKENIZE_THREADS, Runtime

    rt, release, running = Runtime(ServeConfig()), threading.Event(), []

    def tokenize_slowly():
        running.append(1)
        release.wait(10)

    async def run():
        left = [asyncio.ensure_future(rt.off_loop(tokenize_slowly)) for _ in range(TOKENIZE_THREADS)]
        while len(running) < TOKENIZE_THREADS:
            await asyncio.sleep(0.01)
        for task in left:  # their clients disconnected
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        later = asyncio.ensure_future(rt.off_loop(lambda: "tokenized"))
        await asyncio.sleep(0.3)
        waited = not later.done()
        release.set()
        return waited, await later

    assert asyncio.run(run()) == (True, "tokenized")


def test_the_connection_is_watched_only_by_a_request_still_running_after_watch_after_s():
    """A request answered within WATCH_AFTER_S never awaits `receive` (a task per request cost 11-18% of the
    server's own throughput at 16 clients); one still running then is cancelled when its client leaves."""
    import asyncio

    from starlette.requests import ClientDisconnect

    from postemb_rt.serving.auth import _cancelled_on_disconnect

    async def run(block_s: float) -> tuple[str, int]:
        calls = []

        async def receive():
            calls.append(1)
            await asyncio.sleep(0.01)
            return {"type": "http.disconnect"}

        try:
            async with _cancelled_on_disconnect(receive, after_s=0.05):
                await asyncio.sleep(block_s)
            return "answered", len(calls)
        except ClientDisconnect:
            return "cancelled", len(calls)

    assert asyncio.run(run(0.0)) == ("answered", 0)
    assert asyncio.run(run(5.0)) == ("cancelled", 1)


def test_ctrl_c_drains_and_exits_130(tmp_path):
    """As README says; it was 130 or 0 at random (uvicorn re-raises the SIGINT it caught into asyncio's runner,
    which either cancels its task or raises KeyboardInterrupt)."""
    import signal

    srv = ServerProc(fault_argv(tmp_path))
    srv.wait_ready()
    srv.proc.send_signal(signal.SIGINT)
    rc = srv.proc.wait(60)
    time.sleep(0.2)  # the output reader thread
    out = "".join(srv.lines)
    assert rc == 130 and "postemb serve: stopped" in out and "Traceback" not in out, out


def test_a_second_ctrl_c_stops_at_once_says_so_and_exits_130(tmp_path):
    """The first Ctrl-C drains the requests in flight (up to --drain-timeout); a second one stops at once, as
    uvicorn does. It used to print Starlette's traceback of the cancelled lifespan and exit 0 ("stopped")."""
    import signal

    srv = ServerProc(fault_argv(tmp_path, "--drain-timeout=30"))
    srv.wait_ready()
    (tmp_path / "hold").touch()

    def held_request():
        try:
            httpx.post(srv.url + "/embed_full", json={"inputs": ["held in the model"]}, timeout=60)
        except httpx.TransportError:
            pass  # the server stopped without answering: what a second Ctrl-C means

    t = threading.Thread(target=held_request)
    try:
        t.start()
        wait_for(lambda: (tmp_path / "held").exists(), 60, "the request to reach the held model")
        srv.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)  # draining: waiting for the held request
        assert srv.proc.poll() is None
        srv.proc.send_signal(signal.SIGINT)
        wait_for(lambda: any("stopped at a second Ctrl-C" in line for line in srv.lines), 30, "the server to stop")
        (tmp_path / "hold").unlink()  # the batch being computed finishes (the process waits for its thread)
        rc = srv.proc.wait(30)
    finally:
        (tmp_path / "hold").unlink(missing_ok=True)
        t.join(60)
        srv.stop()
    time.sleep(0.2)  # the output reader thread
    out = "".join(srv.lines)
    assert rc == 130, out
    assert "stopped at a second Ctrl-C: requests in flight were not answered" in out
    assert "Traceback" not in out and "CancelledError" not in out, out
