"""Prometheus metrics: requests and latency per endpoint, requests in progress, gallery size; summed over every
worker process."""

from __future__ import annotations

import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

# Loopback round trips are ~0.1-1 ms, an enrollment tens of ms, a cold start seconds.
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own switch to shared, file-backed values


class Metrics:
    """One per app. With several workers, prometheus_client's multiprocess mode (one directory of files that
    every worker writes) makes a scrape of any worker report the sum over all of them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("metaedge_http_requests", "HTTP requests served", ("method", "route", "status"),
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram("metaedge_http_request_duration_seconds", "Time from request to last byte sent",
                                 ("method", "route"), buckets=BUCKETS, registry=self.registry)  # fmt: skip
        # By method alone: the route is known only once the app has routed the request. Summed over the living
        # workers. A request counts from the moment a worker has taken it, so what a graceful stop lets finish.
        self.in_progress = Gauge("metaedge_http_requests_in_progress", "HTTP requests being handled now",
                                 ("method",), multiprocess_mode="livesum", registry=self.registry)  # fmt: skip

    def render(self, classes: int, embeddings: int) -> tuple[bytes, str]:
        """The text exposition format: request metrics plus the gallery's size as read just now."""
        if os.environ.get(MULTIPROC_ENV):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = self.registry
        gallery = CollectorRegistry()
        gallery.register(_GallerySize(classes, embeddings))
        return generate_latest(registry) + generate_latest(gallery), CONTENT_TYPE_LATEST


class _GallerySize:
    def __init__(self, classes: int, embeddings: int) -> None:
        self.classes, self.embeddings = classes, embeddings

    def collect(self):
        yield GaugeMetricFamily("metaedge_gallery_classes", "Classes enrolled in the gallery", value=self.classes)
        yield GaugeMetricFamily("metaedge_gallery_embeddings", "Embeddings (enrolled images) in the gallery",
                                value=self.embeddings)  # fmt: skip


class MetricsMiddleware:
    """ASGI middleware: count and time every request under its route template (not its raw path, which a
    client could vary without end)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]
        in_progress = self.metrics.in_progress.labels(scope["method"])
        in_progress.inc()

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            in_progress.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - start)
