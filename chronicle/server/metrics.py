"""Prometheus metrics (``GET /metrics``), correct across ``serve --workers N``.

One :class:`Metrics` object per server process, built when the process starts serving;
with several workers the supervisor switches prometheus-client to its multiprocess mode
(:func:`enable_multiprocess`) before forking, every worker writes its values to files in
a shared directory, and whichever worker answers a scrape adds them all up.

What is measured: requests (latency by route pattern and status), appends (entries,
batch sizes, commit latency), chain lengths, replication (sync outcomes, seconds since
each source last synced, stopped sources), cross-sign and witness outcomes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import prometheus_client
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def enable_multiprocess(directory: Path) -> None:
    """Before forking workers: their metrics go to files in ``directory``, summed when any
    of them is scraped."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)
    prometheus_client.values.ValueClass = (
        prometheus_client.values.MultiProcessValue())  # type: ignore[no-untyped-call]


def worker_gone(pid: int) -> None:
    """A worker exited: its live gauges no longer count."""
    if os.environ.get(MULTIPROC_ENV):
        prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class Metrics:
    """The metrics of one server process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Histogram("chronicle_request_seconds", "HTTP requests by route "
                                  "pattern and status", ["method", "route", "status"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.appended = Counter("chronicle_entries_appended", "Entries appended to our "
                                "chains", ["instance"], registry=r)
        self.batches = Histogram("chronicle_batch_entries", "Entries per group commit",
                                 ["instance"], buckets=BATCH_BUCKETS, registry=r)
        self.commits = Histogram("chronicle_commit_seconds", "Group commit latency (lock to "
                                 "durable commit)", ["instance"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.chain = Gauge("chronicle_chain_entries", "Entries in each of our chains",
                           ["instance"], multiprocess_mode="max", registry=r)
        self.syncs = Counter("chronicle_replica_syncs", "Replica syncs by outcome",
                             ["source", "status"], registry=r)
        self.replica_age = Gauge("chronicle_replica_seconds_since_sync", "Seconds since "
                                 "each replication source last synced",
                                 ["source"], multiprocess_mode="mostrecent", registry=r)
        self.replica_stopped = Gauge("chronicle_replica_stopped", "1 while a source is "
                                     "stopped (forked or failed)", ["source"],
                                     multiprocess_mode="mostrecent", registry=r)
        self.cross_signs = Counter("chronicle_cross_signs", "Cross-sign pushes by outcome",
                                   ["target", "status"], registry=r)
        self.witness = Counter("chronicle_witness_submissions", "Checkpoints submitted to "
                               "witnesses, by outcome", ["witness", "status"], registry=r)
        self.forwarded = Counter("chronicle_forwarded_publishes", "Publishes a worker sent "
                                 "to worker 0's sequencer (serve --workers N), by outcome: "
                                 "sequencer, or fallback to its own ledger when the link "
                                 "was down", ["outcome"], registry=r)

    def batch(self, instance: str, entries: int, seconds: float) -> None:
        """A group commit finished (the sequencer's observer)."""
        self.appended.labels(instance).inc(entries)
        self.batches.labels(instance).observe(entries)
        self.commits.labels(instance).observe(seconds)

    def render(self) -> bytes:
        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return generate_latest(self.registry)
        summed = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            summed, path=directory)
        return generate_latest(summed)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_of(request: web.Request) -> str:
    """The route pattern (``/chronicle/lookup/{hash}``): bounded label values."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


#: The methods with a label value of their own; any other is counted as ``other``, so a
#: stranger inventing methods cannot grow the metrics (one series per value) without end.
METHODS = frozenset({"GET", "HEAD", "POST", "OPTIONS"})


def timing(metrics: Metrics) -> Middleware:
    """A middleware recording each request's latency (errors included).

    Each labelled series is looked up once and kept (``labels()`` validates and locks on
    every call; the label values are bounded: methods, route patterns, statuses)."""
    series: dict[tuple[str, str, int], Any] = {}

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            method = request.method if request.method in METHODS else "other"
            key = (method, route_of(request), status)
            child = series.get(key)
            if child is None:
                child = series[key] = metrics.requests.labels(key[0], key[1], str(status))
            child.observe(time.perf_counter() - started)

    return observe


CONTENT_TYPE = CONTENT_TYPE_LATEST
