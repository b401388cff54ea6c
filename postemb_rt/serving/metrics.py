"""Prometheus metrics: HTTP request counters (fed by ``auth.Gate``) and the batcher's
``stats()`` (counters, gauges, histograms) read at scrape time.

With ``postemb serve --workers N`` a scrape reaches one worker, so every worker answers for all:
the HTTP metrics use prometheus-client's multiprocess mode (files in ``PROMETHEUS_MULTIPROC_DIR``,
which the command creates), and each worker writes a snapshot of its batchers' stats and
connection counts there every ``PUBLISH_S`` seconds; a scrape adds the other workers' latest
snapshots to its own live numbers (``merge``)."""
from __future__ import annotations

import copy
import glob
import json
import logging
import math
import os
import threading

from ..batching import COUNTERS, GAUGES
from ..durable import pid_alive

log = logging.getLogger("postemb_rt.server")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's; set by `postemb serve --workers N`
WORKERS_ENV = "POSTEMB_SERVE_WORKERS"  # how many workers `postemb serve --workers N` started
PUBLISH_S = 1.0  # how often a worker writes its snapshot (another worker's numbers are at most this old)

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
        for k, doc in _BATCHER_HISTOGRAMS.items():
            fam = HistogramMetricFamily(f"postemb_batcher_{k}", doc, labels=labels)
            for values, s in stats:
                h = s.get(k)
                if h is None:  # SerialCore (no extension) keeps counters only
                    continue
                cum, buckets = 0, []
                for bound, n in zip(h["bounds"] + [math.inf], h["counts"]):
                    cum += n
                    buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cum))
                fam.add_metric(values, buckets, sum_value=h["sum"])
            if fam.samples:
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
        self.batchers = BatcherCollector(models, self.shared_dir)
        self.registry.register(self.batchers)

    def exposition(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        if not self.shared_dir:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry, self.shared_dir)  # the HTTP metrics of every worker, summed
        registry.register(self.batchers)
        return generate_latest(registry)

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
