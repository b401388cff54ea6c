"""Prometheus metrics: HTTP request counters (fed by ``auth.Gate``) and the batcher's
``stats()`` (counters, gauges, histograms) read at scrape time."""
from __future__ import annotations

import math

from ..batching import COUNTERS, GAUGES

_BATCHER_HISTOGRAMS = {"batch_size": "posts per batch", "batch_padding_ratio": "padded share of a batch's slots",
                       "queue_seconds": "seconds a post waited in the batcher queue",
                       "inference_seconds": "seconds per model call"}


class BatcherCollector:
    """prometheus-client custom collector over each model's ``DynamicBatcher.stats()``. With several
    models served, ``postemb_ready`` and every ``postemb_batcher_*`` series get a ``model`` label (the
    served name); with one, they have none, as before."""

    def __init__(self, models):
        self.models = models  # serving.registry.ModelRegistry

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        from .connections import STATS

        yield GaugeMetricFamily("postemb_http_connections", "open HTTP connections (postemb serve's protocol)",
                                value=STATS["open"])
        closed = CounterMetricFamily("postemb_http_connections_closed", "connections closed by a limit, by reason",
                                     labels=["reason"])
        for reason in ("evicted", "refused", "header_timeout", "body_timeout", "accept_failed"):
            closed.add_metric([reason], STATS[reason])
        yield closed
        runtimes = self.models.runtimes
        labels = ["model"] if self.models.multi else []
        names = self.models.names()
        ready = GaugeMetricFamily("postemb_ready", "1 when the model is loaded, warmed up and healthy", labels=labels)
        stats = []  # (label values, batcher stats) of the loaded models
        for rt, name in zip(runtimes, names):
            values = [name] if labels else []
            ready.add_metric(values, float(rt.ready and rt.backend_error is None))
            if rt.batcher is not None:
                stats.append((values, rt.batcher.stats()))
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
    in flight, and the batcher collector over ``models`` (``serving.registry.ModelRegistry``)."""

    def __init__(self, models):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("postemb_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("postemb_http_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.in_flight = Gauge("postemb_http_requests_in_flight", "embedding requests in progress (admitted)",
                               registry=self.registry)
        self.registry.register(BatcherCollector(models))
