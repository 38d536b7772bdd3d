"""Prometheus metrics, one registry per app instance (tests build many apps in one process).

``/metrics`` on the API port is public only in development (``Settings.metrics_are_public``); otherwise
it needs the admin token.  ``Metrics.serve_separately`` adds a listener that serves only the metrics, for
an address only the monitoring network reaches (``ota serve --metrics-port``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("ota_http_requests_total", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("ota_http_request_seconds", "HTTP request latency", ["route"],
                                 buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30),
                                 registry=self.registry)
        self.polls = Counter("ota_polls_total", "Device polls by whether they carried an offer", ["offer"],
                             registry=self.registry)
        # A poll whose device or line was not in this process's cache reads it (server/devices/pollcache.py):
        # after a restart every car's first poll does; in a steady fleet this should stay flat.
        self.poll_cache_loads = Counter("ota_poll_cache_loads_total", "Poll cache misses that read the database",
                                        ["kind"], registry=self.registry)
        self.poll_writes = Counter("ota_poll_writes_total", "Polls the caches could not answer: the database path "
                                   "(a new or re-signed offer, a changed running version)", registry=self.registry)
        self.bytes_sent = Counter("ota_artifact_bytes_sent_total", "Artifact bytes written to sockets", ["kind"],
                                  registry=self.registry)
        self.reports = Counter("ota_reports_total", "Device reports by outcome and state", ["outcome", "state"],
                               registry=self.registry)
        # Issue 18: merged quality figures per running or paused rollout and kind (shadow | live), set by the
        # rollout tick; a rollout that finishes leaves the gauges (label cardinality stays bounded).
        self.quality = {name: Gauge(f"ota_rollout_quality_{name}", help_, ["rollout", "kind"], registry=self.registry)
                        for name, help_ in (("frames", "Frames compared by the rollout's cars"),
                                            ("agreement", "Top-1 agreement of the candidate with the baseline"),
                                            ("latency_p99_ratio", "Candidate p99 latency over the baseline's"))}
        # Issue 21: fleet gauges, set from SQL aggregates on the rollout tick (a scrape only renders them).
        self.fleet_devices = Gauge("ota_devices", "Devices by line and running version", ["line", "version"],
                                   registry=self.registry)
        self.rollout_updates = Gauge("ota_rollout_updates", "Update rows of each unfinished rollout by update state",
                                     ["rollout", "state"], registry=self.registry)
        self.rollout_state = Gauge("ota_rollout_state", "1 for each unfinished rollout, labelled with its state",
                                   ["rollout", "line", "state"], registry=self.registry)
        self.rollouts_by_state = Gauge("ota_rollouts", "Rollouts by state", ["state"], registry=self.registry)

    def set_fleet(self, devices: dict[tuple[str, str], int], updates: dict[tuple[str, str], int],
                  active: dict[str, tuple[str, str]], rollouts: dict[str, int]) -> None:
        """Replace the fleet gauges (issue 21) with the tick's aggregates (``server/rollouts/gauges.py``)."""
        for gauge in (self.fleet_devices, self.rollout_updates, self.rollout_state, self.rollouts_by_state):
            gauge.clear()
        for (line, version), n in devices.items():
            self.fleet_devices.labels(line, version).set(n)
        for (rollout, state), n in updates.items():
            self.rollout_updates.labels(rollout, state).set(n)
        for rollout, (line, state) in active.items():
            self.rollout_state.labels(rollout, line, state).set(1)
        for state, n in rollouts.items():
            self.rollouts_by_state.labels(state).set(n)

    def set_quality(self, figures: dict[tuple[int, str], dict[str, float | None]]) -> None:
        """Replace every quality gauge with ``figures``: (rollout id, kind) -> metric -> value (None: unset)."""
        for gauge in self.quality.values():
            gauge.clear()
        for (rollout_id, kind), values in figures.items():
            for name, gauge in self.quality.items():
                value = values.get(name)
                if value is not None:
                    gauge.labels(str(rollout_id), kind).set(value)

    def asgi(self, app: ASGIApp) -> ASGIApp:
        """Count and time every HTTP request around ``app``.

        A plain ASGI wrapper rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs each
        request through an extra task group and memory streams, a large share of a cached poll's cost (issue 8).
        """

        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = 500

            async def send_and_note(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_and_note)
            finally:
                route = getattr(scope.get("route"), "path", "unmatched")
                self.requests.labels(route, scope["method"], str(status)).inc()
                self.latency.labels(route).observe(time.perf_counter() - start)

        return middleware

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def serve_separately(self, host: str, port: int) -> Callable[[], None]:
        """Serve this registry's metrics on ``host:port`` from a daemon thread; returns the function that stops it.

        One listener per process: with several uvicorn workers each would have its own counters and all
        but one would fail to bind, so ``ota serve`` refuses ``--metrics-port`` with more than one worker.

        Raises:
            OSError: the port is taken or the address is not local.
        """
        httpd, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)

        return stop
