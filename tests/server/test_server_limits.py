"""Bounded server memory and honest accounting: 1,000 slow clients on loopback, client
disconnects (499), startup refusals, the OpenAPI spec checked by schemathesis."""
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.server.conftest import API_KEY, LIMITS, READY_TIMEOUT_S, ServerProc, require_serve_extra, serve_argv

httpx = require_serve_extra()

SLOW_CLIENTS = 1000
RSS_GROWTH_BOUND_MIB = 150  # bodies held <= 64 x 64 KiB, + 1,000 connections' buffers, with room


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def metric(client, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{{want}}} " if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _head(port: int, length: int) -> bytes:
    return (f"POST /embed_full HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode() + b'{"inputs": ["slow'


def test_1000_slow_clients_hold_no_slot_memory_stays_bounded_and_requests_pass(main_server, client):
    """1,000 clients each send headers and the start of a 60 KB body, then stall. A client still
    sending its body holds no compute slot (max_concurrent_requests is 64), so none is admitted
    nor refused, a normal request is served meanwhile, /health answers, and the server's RSS
    grows by less than RSS_GROWTH_BOUND_MIB. Closing the stalled ones is a 499 each, never a 500."""
    port = int(main_server.url.rsplit(":", 1)[1])
    pid = main_server.proc.pid
    before_rss = rss_mib(pid)
    before_499 = metric(client, "postemb_http_requests_total", route="/embed_full", status="499")
    before_500 = metric(client, "postemb_http_requests_total", route="/embed_full", status="500")

    async def run():
        conns = []
        for _ in range(SLOW_CLIENTS):
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
            w.write(_head(port, 60_000))
            conns.append((r, w))
        await asyncio.gather(*(w.drain() for _, w in conns))

        async def status(r):
            try:
                line = await asyncio.wait_for(r.readline(), 1)
            except asyncio.TimeoutError:
                return None  # the server waits for the rest of its body
            return int(line.split()[1]) if line else -1

        codes = await asyncio.gather(*(status(r) for r, _ in conns))
        health = await asyncio.to_thread(lambda: httpx.get(main_server.url + "/health", timeout=10).status_code)
        served = await asyncio.to_thread(lambda: client.post("/embed_full", json={"inputs": ["served meanwhile"]}))
        rss = rss_mib(pid)
        in_flight = await asyncio.to_thread(metric, client, "postemb_http_requests_in_flight")
        for _, w in conns:
            w.close()
        return codes, health, served, rss, in_flight

    codes, health, served, rss, in_flight = asyncio.run(run())
    assert codes == [None] * SLOW_CLIENTS, sorted(set(codes), key=str)
    assert health == 200 and served.status_code == 200 and in_flight == 0, (health, served.text[:300], in_flight)
    assert rss - before_rss < RSS_GROWTH_BOUND_MIB, (before_rss, rss)
    wait_for(lambda: metric(client, "postemb_http_requests_total", route="/embed_full", status="499") - before_499
             == SLOW_CLIENTS, 60, "the stalled requests to end as 499")
    assert metric(client, "postemb_http_requests_total", route="/embed_full", status="500") == before_500
    assert client.post("/embed_full", json={"inputs": ["served again"]}).status_code == 200
    assert "Traceback" not in "".join(main_server.lines)


def test_empty_api_key_refuses_to_start(monkeypatch):
    import argparse

    from postemb_rt.commands.serve import config_from_args, register
    from postemb_rt.errors import ValidationError

    monkeypatch.setenv("POSTEMB_API_KEY", "")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    for argv in (["serve"], ["serve", "--api-key", "  "]):
        with pytest.raises(ValidationError, match=r"`--api-key` is empty.*Fix: set a "
                                                  r"non-empty key"):
            config_from_args(parser.parse_args(argv))
    monkeypatch.delenv("POSTEMB_API_KEY")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert config_from_args(parser.parse_args(["serve"])).api_key is None  # no key on purpose: allowed


def test_model_load_failure_with_several_workers_exits_1(tmp_path):
    argv = [sys.executable, "-m", "postemb_rt.cli", "serve", "--model", str(tmp_path / "no-such-model"),
            "--port", "0", "--workers", "2"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert out.returncode == 1, (out.stdout[-2000:], out.stderr[-2000:])
    assert "failed to load" in out.stderr and "no-such-model" in out.stderr
    port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+) .*2 workers", out.stdout).group(1))
    assert port > 0  # --port 0 is resolved and printed, as with one worker


def test_several_workers_each_answer_metrics_for_all(tmp_path):
    """A scrape reaches one of the workers; whichever it is, it counts every worker's requests,
    posts and connections, in our series and in text-embeddings-inference's (the request counters through
    prometheus-client's multiprocess files, the batcher's through the snapshots). Each request opens a new
    connection, so the workers share them."""
    from postemb_rt.serving.metrics import PUBLISH_S

    srv = ServerProc(serve_argv("--workers", "2"), env={"TMPDIR": str(tmp_path)})  # the metrics dir lands there
    try:
        srv.wait_ready()  # every worker's model is loaded
        for _ in range(4):  # whichever worker answers (a new connection each)
            assert httpx.get(srv.url + "/ready").status_code == 200
        c = httpx.Client(base_url=srv.url, timeout=60)
        wait_for(lambda: metric(c, "postemb_server_workers") == 2 and metric(c, "postemb_ready") == 1
                 and metric(c, "postemb_batcher_posts_computed_total") >= 2,  # each worker's warm-up post
                 READY_TIMEOUT_S, "both workers ready and publishing")
        time.sleep(2 * PUBLISH_S)  # another worker's batcher numbers are up to PUBLISH_S old
        before = metric(c, "postemb_batcher_posts_computed_total")
        te_before = metric(c, "te_embed_queue_duration_count")  # text-embeddings-inference's twin series
        for i in range(16):  # a new connection each: the kernel hands them to either worker
            assert httpx.post(srv.url + "/embed_full", json={"inputs": [f"post {i}", "another"]}).status_code == 200

        def counted():
            text = c.get("/metrics").text
            return (metric(c, "postemb_http_requests_total", route="/embed_full", status="200") == 16
                    and metric(c, "postemb_batcher_posts_computed_total") == before + 32
                    # TEI's series too (tests/server/test_metrics_tei.py), its counters without `_total`
                    and metric(c, "te_request_count", method="batch") == 16
                    and metric(c, "te_request_success", method="batch") == 16 and metric(c, "te_embed_success") == 32
                    and metric(c, "te_request_duration_count") == 16
                    and metric(c, "te_embed_queue_duration_count") == te_before + 32
                    and "te_request_count_total" not in text)
        wait_for(counted, 10, "every worker's requests in the scrape")
        time.sleep(2 * PUBLISH_S)
        for _ in range(8):  # every scrape, whichever worker answers it
            c.close()
            c = httpx.Client(base_url=srv.url, timeout=60)
            assert counted() and metric(c, "postemb_server_workers") == 2
    finally:
        rc = srv.stop()
    assert rc == 0, "".join(srv.lines)[-3000:]
    assert not list(tmp_path.glob("postemb-serve-metrics-*")), "the metrics directory outlived the server"


def test_metrics_merge_sums_workers_and_a_model_is_ready_only_in_all():
    from postemb_rt.batching import COUNTERS, GAUGES
    from postemb_rt.serving.metrics import merge

    def snap(pid, ready, n, bounds=(1.0, 2.0)):
        stats = {**{k: n for k in (*GAUGES, *COUNTERS)},
                 "batch_size": {"bounds": list(bounds), "counts": [n, 0, 1], "sum": 1.5 * n}}
        conns = {"open": n, "evicted": 0, "refused": 1, "header_timeout": 0, "body_timeout": 0, "accept_failed": 0}
        return {"pid": pid, "connections": conns, "models": [{"name": "m", "ready": ready, "stats": stats}]}

    conns, models = merge([snap(1, 1.0, 2), snap(2, 0.0, 3)])
    assert conns["open"] == 5 and conns["refused"] == 2
    m = models["m"]
    assert m["ready"] == 0.0 and m["stats"]["posts_computed"] == 5 and m["stats"]["queued_tokens"] == 5
    assert m["stats"]["batch_size"] == {"bounds": [1.0, 2.0], "counts": [5, 0, 2], "sum": 7.5}
    _, models = merge([snap(1, 1.0, 2), snap(2, 1.0, 3, bounds=(1.0, 4.0))])
    assert models["m"]["ready"] == 1.0 and "batch_size" not in models["m"]["stats"]  # never summed wrongly


def test_ready_with_several_workers_waits_for_every_worker(tmp_path, monkeypatch):
    """A worker still loading answers 503 to the requests it accepts, so /ready counts the other
    workers' last snapshots too: ready only when all --workers N are. A dead worker's is ignored."""
    import json
    from types import SimpleNamespace

    from postemb_rt.serving.metrics import WORKERS_ENV, BatcherCollector

    monkeypatch.setenv(WORKERS_ENV, "2")
    rt = SimpleNamespace(ready=True, backend_error=None, batcher=None)
    me = BatcherCollector(SimpleNamespace(runtimes=[rt], names=lambda: ["m"], multi=False), str(tmp_path))
    assert me.workers_ready() == (1, 2)  # the other worker has not published yet

    def other(pid, ready):
        (tmp_path / f"postemb-worker-{pid}.json").write_text(json.dumps(
            {"pid": pid, "connections": me.snapshot()["connections"],
             "models": [{"name": "m", "ready": ready, "stats": None}]}))
    other(os.getppid(), 0.0)
    assert me.workers_ready() == (1, 2)
    other(os.getppid(), 1.0)
    assert me.workers_ready() == (2, 2)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other(os.getppid(), 0.0)
    other(dead.pid, 1.0)  # a stopped worker's file left behind: not counted
    assert me.workers_ready() == (1, 2)


def test_several_workers_on_a_port_in_use_fail_as_one_worker_does():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-m", "postemb_rt.cli", "serve", "--model", "base", "--port", str(port),
                "--workers", "2"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, (out.stdout[-2000:], out.stderr[-2000:])
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr


def test_a_port_in_use_is_one_error_with_the_fix():
    """README: errors name the argument, the value and the fix; "cannot listen" named no fix."""
    from postemb_rt.commands.serve import listen
    from postemb_rt.errors import ValidationError
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValidationError, match=rf"cannot listen on 127.0.0.1:{port}: .*\. Fix: .*--port"):
            listen("127.0.0.1", port)


def test_openapi_documents_error_responses_and_metrics_content_type(client):
    spec = client.get("/openapi.json").json()
    for path, refused in (("/v1/embeddings", "400"), ("/embed_full", "422")):  # OpenAI's status, and ours
        assert {"200", "401", refused, "413", "415", "429", "503"} <= set(spec["paths"][path]["post"]["responses"])
    assert set(spec["paths"]["/ready"]["get"]["responses"]) == {"200", "503"}
    metrics_200 = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics_200) == [client.get("/metrics").headers["content-type"]]


@pytest.mark.skipif(shutil.which("schemathesis", path=os.path.dirname(sys.executable)) is None,
                    reason="schemathesis is not installed (pip install -e '.[test]')")
def test_schemathesis_finds_no_server_error_nor_undocumented_answer(main_server, tmp_path):
    """A spec-driven fuzzer against the live server: no 500, and every status code, content
    type and body it sees is the one the OpenAPI spec documents. Bounded: 25 examples per
    operation, one worker, 10 s per request."""
    exe = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    argv = [exe, "--no-color", "run", main_server.url + "/openapi.json", "-H", f"Authorization: Bearer {API_KEY}",
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                        "response_schema_conformance",
            "--max-examples", "25", "--workers", "1", "--request-timeout", "10", "--seed", "1",
            "--generation-deterministic"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=400, cwd=tmp_path,
                         env={**os.environ, "NO_COLOR": "1"})
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-6000:]
    assert re.search(r"\b\d+ passed\b", text) or "passed" in text.lower(), text[-2000:]
