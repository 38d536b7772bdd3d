"""Prometheus metrics, one registry per app instance (tests build many apps in one process)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response


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
        self.bytes_sent = Counter("ota_artifact_bytes_sent_total", "Artifact bytes written to sockets", ["kind"],
                                  registry=self.registry)
        self.reports = Counter("ota_reports_total", "Device reports by outcome and state", ["outcome", "state"],
                               registry=self.registry)

    async def middleware(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        self.requests.labels(route, request.method, str(response.status_code)).inc()
        self.latency.labels(route).observe(time.perf_counter() - start)
        return response

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
