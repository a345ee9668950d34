"""What `GET /metrics` exposes, in Prometheus text format.

prometheus_client (a small, pure-Python, well-kept library) writes the exposition: label escaping,
cumulative histogram buckets, `_count`/`_sum` and HELP/TYPE lines are easy to get subtly wrong by hand
and scrapers are strict about them. Each server gets its own registry so tests (and two apps in one
process) never share counts, and no process or platform collectors are mixed in.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# Seconds: from a tiny model's sub-millisecond run to a slow device's second; beyond that, +Inf.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    """The server's counters and histograms (edgetl_ prefix)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        # `_created` timestamps double every series for nothing a device dashboard uses (process-wide
        # switch; this process only serves)
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "edgetl_requests",
            "HTTP requests answered, by route and status code",
            ["route", "status"],
            registry=r,
        )
        self.errors = Counter(
            "edgetl_errors",
            "Requests answered with an error, by kind (bad_input, too_large, ...)",
            ["kind"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "edgetl_request_seconds",
            "Whole POST /v1/predict time, body read to answer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess_seconds = Histogram(
            "edgetl_preprocess_seconds",
            "Decode, resize and normalise of one input",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "edgetl_inference_seconds", "One model call on one input", buckets=LATENCY_BUCKETS, registry=r
        )
        self.in_flight = Gauge(
            "edgetl_in_flight",
            "Predict requests admitted and not yet finished (queued or running)",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
