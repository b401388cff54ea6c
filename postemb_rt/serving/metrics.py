"""Prometheus metrics: HTTP request counters (fed by ``auth.Gate``) and the batcher's
``stats()`` (counters, gauges, histograms) read at scrape time.

With ``postemb serve --workers N`` a scrape reaches one worker, so every worker answers for all:
the HTTP metrics use prometheus-client's multiprocess mode (files in ``PROMETHEUS_MULTIPROC_DIR``,
which the command creates), and each worker writes a snapshot of its batchers' stats and
connection counts there every ``PUBLISH_S`` seconds; a scrape adds the other workers' latest
snapshots to its own live numbers (``merge``).

Beside our ``postemb_*`` series, text-embeddings-inference's (``te_*``, ``TeiRequest``), with TEI's names, types,
labels and units, so that a TEI dashboard reads this server unchanged; only those this server measures."""
from __future__ import annotations

import copy
import glob
import json
import logging
import math
import os
import threading
import time

from ..batching import COUNTERS, GAUGES
from ..durable import pid_alive

log = logging.getLogger("postemb_rt.server")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's; set by `postemb serve --workers N`
WORKERS_ENV = "POSTEMB_SERVE_WORKERS"  # how many workers `postemb serve --workers N` started
PUBLISH_S = 1.0  # how often a worker writes its snapshot (another worker's numbers are at most this old)

# text-embeddings-inference's request series (router/src/http/server.rs, core/src/infer.rs): duration buckets in
# seconds as TEI's router/src/prometheus.rs sets them (35, geometric from 15 us, x1.5)
TEI_DURATION_BUCKETS = tuple(float(f"{1e-5 * 1.5 ** k:.10g}") for k in range(1, 36))
TEI_METHODS = ("single", "batch")
# TEI's `err` label for a refused request: codes TEI's tokenizer refuses (counted as "tokenization" there)
_TEI_TOKENIZATION = frozenset({"max_length", "max_input_chars", "empty_string", "unknown_prompt_name", "max_chunks"})
# the batcher's series under TEI's names (core/src/queue.rs): a gauge, then histograms
_TEI_BATCHER = {"queued_posts": ("te_queue_size", "posts waiting in the batcher queue"),
                "batch_size": ("te_batch_next_size", "posts per batch"),
                "queue_seconds": ("te_embed_queue_duration", "seconds a post waited in the batcher queue")}

_BATCHER_HISTOGRAMS = {"batch_size": "posts per batch", "batch_padding_ratio": "padded share of a batch's slots",
                       "queue_seconds": "seconds a post waited in the batcher queue",
                       "inference_seconds": "seconds per model call"}


def _add_stats(total: dict | None, s: dict) -> dict:
    """``s`` (one batcher's stats) added into ``total``: gauges, counters and histogram buckets summed."""
    if total is None:
        return copy.deepcopy({k: s[k] for k in (*GAUGES, *COUNTERS, *_BATCHER_HISTOGRAMS) if k in s})
    for k in (*GAUGES, *COUNTERS):
        total[k] += s[k]
    for k in _BATCHER_HISTOGRAMS:
        h, mine = s.get(k), total.get(k)
        if h is None or mine is None or h["bounds"] != mine["bounds"]:
            total.pop(k, None)  # not comparable: left out rather than summed wrongly
            continue
        mine["counts"] = [a + b for a, b in zip(mine["counts"], h["counts"])]
        mine["sum"] += h["sum"]
    return total


def merge(snapshots: list[dict]) -> tuple[dict, dict]:
    """Workers' snapshots -> (connection counts summed, {model name: {"ready", "stats"}}): a model
    is ready only when it is in every worker; its batcher numbers are the sums over the workers."""
    conns = {k: sum(s["connections"][k] for s in snapshots) for k in snapshots[0]["connections"]}
    models: dict = {}
    for snap in snapshots:
        for m in snap["models"]:
            agg = models.setdefault(m["name"], {"ready": 1.0, "stats": None})
            agg["ready"] = min(agg["ready"], m["ready"])
            if m["stats"] is not None:
                agg["stats"] = _add_stats(agg["stats"], m["stats"])
    return conns, models


def _buckets(h: dict) -> list:
    """One batcher histogram (``bounds``, per-bucket ``counts``) as prometheus-client's cumulative buckets."""
    cum, buckets = 0, []
    for bound, n in zip(h["bounds"] + [math.inf], h["counts"]):
        cum += n
        buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cum))
    return buckets


def tei_method(inputs) -> str | None:
    """TEI's ``method`` label for a request's inputs: ``single`` (one string, or one input's token ids), ``batch``
    (a list of them); None for anything else (a body TEI's JSON extractor refuses, so TEI counts nothing)."""
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and type(inputs[0]) is int):
        return "single"
    return "batch" if isinstance(inputs, list) else None


def tei_failure(err) -> str:
    """TEI's ``te_request_failure`` ``err`` label for a refused request (``serving.errors.ApiError``): TEI's
    values where TEI refuses the same thing; ``unhealthy`` for a 503 TEI has no counterpart of (loading, a
    deadline, shutdown)."""
    code = err.body.get("code")
    if err.status == 429:
        return "overloaded"
    if code == "max_inputs":
        return "batch_size"
    if code == "backend_error":
        return "inference"
    if code in _TEI_TOKENIZATION:
        return "tokenization"
    return "unhealthy" if err.status >= 500 else "validation"


class TeiRequest:
    """``with metrics.tei_request(started) as t``: one embedding request counted in TEI's series. ``t.received
    (method)`` once its body is a JSON object (TEI counts a request once its JSON extractor took it):
    ``te_request_count{method}``; ``t.embedding(n)`` once its n inputs are checked: ``te_embed_count``. On
    leaving: ``te_request_success{method}``, ``te_embed_success`` and ``te_request_duration`` (seconds since
    ``started``, ``time.monotonic()``), or ``te_request_failure{err}`` (``tei_failure``; ``dropped``: the client
    left). A 429 before the body was parsed (admission) counts as a failure too. ``counted`` False (``/tokenize``,
    ``/decode``, as TEI's): failures only."""

    def __init__(self, metrics: "Metrics", started: float | None, counted: bool = True):
        self.m, self.started, self.counted = metrics, started, counted
        self.method, self.inputs = None, 0

    def received(self, method: str | None) -> None:
        self.method = method
        if method is not None and self.counted:
            self.m.tei_requests.labels(method).inc()

    def embedding(self, n: int) -> None:
        self.inputs = n
        self.m.tei_embeds.inc(n)

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if exc is None:
            if self.method is not None and self.counted:
                self.m.tei_success.labels(self.method).inc()
                self.m.tei_embeds_ok.inc(self.inputs)
                self.m.tei_duration.observe(time.monotonic() - self.started)
            return False
        from starlette.requests import ClientDisconnect

        from .errors import ApiError

        if isinstance(exc, ApiError) and (self.method is not None or exc.status == 429):
            self.m.tei_failures.labels(tei_failure(exc)).inc()
        elif self.method is not None and isinstance(exc, ClientDisconnect):
            self.m.tei_failures.labels("dropped").inc()
        elif self.method is not None and isinstance(exc, Exception):  # a server bug (answered 500)
            self.m.tei_failures.labels("internal").inc()
        return False


class BatcherCollector:
    """prometheus-client custom collector over each model's ``DynamicBatcher.stats()`` and the
    connection counts (of every worker, with ``shared_dir``: see the module). With several models
    served, ``postemb_ready`` and every ``postemb_batcher_*`` series get a ``model`` label (the
    served name); with one, they have none, as before."""

    def __init__(self, models, shared_dir: str | None = None):
        self.models = models  # serving.registry.ModelRegistry
        self.shared_dir = shared_dir
        self.pid = os.getpid()
        self.wake = threading.Event()  # set: publish now (the models' state changed), or stop

    def snapshot(self) -> dict:
        """This process's numbers, now (JSON-ready)."""
        from .connections import counts

        models = [{"name": name, "ready": float(rt.ready and rt.backend_error is None),
                   "stats": rt.batcher.stats() if rt.batcher is not None else None}
                  for rt, name in zip(self.models.runtimes, self.models.names())]
        return {"pid": self.pid, "connections": counts(), "models": models}

    def _path(self, pid: int) -> str:
        return os.path.join(self.shared_dir, f"postemb-worker-{pid}.json")

    def publish(self) -> None:
        """Writes this worker's snapshot for the others' scrapes (atomically: a reader never sees half)."""
        tmp = self._path(self.pid) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.snapshot(), f)
        os.replace(tmp, self._path(self.pid))

    def run_publisher(self, stop: threading.Event) -> None:
        """``publish`` every PUBLISH_S, and at once when ``wake`` is set, until ``stop``; then this
        worker's files are removed (its live gauges included), so a stopped worker no longer counts."""
        from prometheus_client import multiprocess

        while not stop.is_set():
            try:
                self.publish()
            except OSError as exc:  # a full disk: the other workers' scrapes miss this one meanwhile
                log.warning("cannot write this worker's metrics snapshot to %s: %s", self.shared_dir, exc)
            self.wake.wait(PUBLISH_S)
            self.wake.clear()
        try:
            os.unlink(self._path(self.pid))
        except FileNotFoundError:
            pass
        multiprocess.mark_process_dead(self.pid, self.shared_dir)

    def snapshots(self) -> list[dict]:
        """This worker's live numbers, then each other live worker's latest snapshot."""
        out = [self.snapshot()]
        if not self.shared_dir:
            return out
        for path in glob.glob(self._path("*")):
            try:
                with open(path, encoding="utf-8") as f:
                    snap = json.load(f)
            except (OSError, ValueError):  # removed as its worker stopped
                continue
            if snap["pid"] != self.pid and pid_alive(snap["pid"]):
                out.append(snap)
        return out

    def workers_ready(self) -> tuple[int, int]:
        """(workers whose every model is ready, workers started): this one live, the others as
        last published."""
        ready = sum(all(m["ready"] for m in snap["models"]) for snap in self.snapshots())
        return ready, int(os.environ.get(WORKERS_ENV, "1"))

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snaps = self.snapshots()
        conns, merged = merge(snaps)
        if self.shared_dir:
            yield GaugeMetricFamily("postemb_server_workers", "worker processes whose numbers this scrape adds up",
                                    value=len(snaps))
        yield GaugeMetricFamily("postemb_http_connections", "open HTTP connections (postemb serve's protocol)",
                                value=conns["open"])
        yield GaugeMetricFamily("postemb_http_connections_stalled", "open connections whose client is not "
                                "reading its answer (closed after body_timeout_s)", value=conns.get("stalled", 0))
        closed = CounterMetricFamily("postemb_http_connections_closed", "connections closed by a limit, by reason",
                                     labels=["reason"])
        for reason in ("evicted", "refused", "header_timeout", "body_timeout", "send_timeout", "accept_failed"):
            closed.add_metric([reason], conns.get(reason, 0))
        yield closed
        labels = ["model"] if self.models.multi else []
        ready = GaugeMetricFamily("postemb_ready", "1 when the model is loaded, warmed up and healthy (in every "
                                  "worker)", labels=labels)
        stats = []  # (label values, batcher stats) of the loaded models
        for name in self.models.names():
            values = [name] if labels else []
            m = merged.get(name, {"ready": 0.0, "stats": None})
            ready.add_metric(values, m["ready"])
            if m["stats"] is not None:
                stats.append((values, m["stats"]))
        yield ready
        if not stats:
            return
        for k in GAUGES:
            fam = GaugeMetricFamily(f"postemb_batcher_{k}", f"batcher {k.replace('_', ' ')} now", labels=labels)
            for values, s in stats:
                fam.add_metric(values, s[k])
            yield fam
        for k in COUNTERS:
            fam = CounterMetricFamily(f"postemb_batcher_{k}", f"batcher {k.replace('_', ' ')}", labels=labels)
            for values, s in stats:
                fam.add_metric(values, s[k])
            yield fam
        hists = [(f"postemb_batcher_{k}", k, doc) for k, doc in _BATCHER_HISTOGRAMS.items()]
        hists += [(name, k, doc) for k, (name, doc) in _TEI_BATCHER.items() if k in _BATCHER_HISTOGRAMS]
        for name, k, doc in hists:
            fam = HistogramMetricFamily(name, doc, labels=labels)
            for values, s in stats:
                if s.get(k) is not None:  # None: SerialCore (no extension) keeps counters only
                    fam.add_metric(values, _buckets(s[k]), sum_value=s[k]["sum"])
            if fam.samples:
                yield fam
        name, doc = _TEI_BATCHER["queued_posts"]
        fam = GaugeMetricFamily(name, doc, labels=labels)
        for values, s in stats:
            fam.add_metric(values, s["queued_posts"])
        yield fam


class Metrics:
    """One app's registry: requests by route and status, latency by route, admitted requests
    in flight, and the batcher collector over ``models`` (``serving.registry.ModelRegistry``).
    ``exposition()`` is the text of a scrape (every worker's numbers, with several)."""

    def __init__(self, models):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.shared_dir = os.environ.get(MULTIPROC_ENV) or None
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("postemb_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("postemb_http_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.in_flight = Gauge("postemb_http_requests_in_flight", "embedding requests in progress (admitted)",
                               registry=self.registry, multiprocess_mode="livesum")
        # text-embeddings-inference's names (TeiRequest); counters are written without `_total` (exposition)
        self.tei_requests = Counter("te_request_count", "embedding requests received, by method (single: one "
                                    "input; batch: a list)", ["method"], registry=self.registry)
        self.tei_success = Counter("te_request_success", "embedding requests answered 200, by method", ["method"],
                                   registry=self.registry)
        self.tei_failures = Counter("te_request_failure", "refused or failed requests, by cause", ["err"],
                                    registry=self.registry)
        for method in TEI_METHODS:  # 0 rather than no series before the first request
            self.tei_requests.labels(method), self.tei_success.labels(method)
        self.tei_embeds = Counter("te_embed_count", "inputs sent to embedding", registry=self.registry)
        self.tei_embeds_ok = Counter("te_embed_success", "inputs embedded", registry=self.registry)
        self.tei_duration = Histogram("te_request_duration", "seconds from the route taking a request (its body "
                                      "read included) to its answer, of requests answered 200",
                                      buckets=TEI_DURATION_BUCKETS, registry=self.registry)
        self.batchers = BatcherCollector(models, self.shared_dir)
        self.registry.register(self.batchers)

    def tei_request(self, started: float | None, counted: bool = True) -> TeiRequest:
        return TeiRequest(self, started, counted)

    def exposition(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        registry = self.registry
        if self.shared_dir:
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(registry, self.shared_dir)  # the HTTP metrics of every worker, summed
            registry.register(self.batchers)
        families = list(registry.collect())
        tei = [f for f in families if f.type == "counter" and f.name.startswith("te_")]
        rest = [f for f in families if not (f.type == "counter" and f.name.startswith("te_"))]
        return generate_latest(_Families(rest)) + _tei_counters(tei)

    def start_publishing(self):
        """With several workers: a thread publishing this worker's snapshot; returns the function that
        stops it (and removes this worker's files). None with one process."""
        if not self.shared_dir:
            return None
        stop = threading.Event()
        thread = threading.Thread(target=self.batchers.run_publisher, args=(stop,), name="postemb-metrics",
                                  daemon=True)
        thread.start()

        def halt():
            stop.set()
            self.batchers.wake.set()
            thread.join()
        return halt


class _Families:
    """A collector of families already collected (``generate_latest`` takes a collector)."""

    def __init__(self, families: list):
        self.families = families

    def collect(self):
        return self.families


def _tei_counters(families: list) -> bytes:
    """TEI's counters as TEI's exporter (metrics-exporter-prometheus) writes them: each sample named as its
    metric (``te_request_count{method="batch"} 3``), where prometheus-client's text format would add ``_total``
    to the name (``te_request_count_total``, which a TEI dashboard's queries do not find); no ``_created``."""
    from prometheus_client.utils import floatToGoString

    def esc(v: str) -> str:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')

    out = []
    for f in families:
        out += [f"# HELP {f.name} {esc(f.documentation)}\n", f"# TYPE {f.name} counter\n"]
        for s in f.samples:
            if s.name == f.name + "_total":
                labels = ",".join(f'{k}="{esc(v)}"' for k, v in sorted(s.labels.items()))
                out.append(f"{f.name}{{{labels}}} " if labels else f"{f.name} ")
                out.append(f"{floatToGoString(s.value)}\n")
    return "".join(out).encode("utf-8")
