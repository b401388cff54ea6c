"""What real clients do besides asking: give up on a request (a timeout, Ctrl-C, the `openai` client's
retry after its timeout), which must not cost the model anything more."""
import json
import socket
import threading
import time

import pytest

from tests.server.conftest import ServerProc, fault_argv, ready_until_done, require_serve_extra
from tests.server.test_server_limits import metric, wait_for

httpx = require_serve_extra()


@pytest.fixture(scope="module")
def fault(tmp_path_factory):
    """(server, fault_dir, httpx.Client): the fault-injecting server (fault_server.py), no API key."""
    fault_dir = tmp_path_factory.mktemp("faults")
    for srv in ready_until_done(ServerProc(fault_argv(fault_dir))):
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
