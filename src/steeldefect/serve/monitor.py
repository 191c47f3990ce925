"""Watching the served model: the Prometheus metrics of `steeldefect serve` (GET /metrics).

Counters and histograms since start: requests by endpoint and HTTP status, their latency, the batch sizes the
engine was given, the time of decoding each request's images, and of each batch in the engine alone and in the
whole scoring (engine and answers: the rest of a request's latency is HTTP and queueing), decisions (clean /
defect) and defect types predicted, the probabilities, the review queue's writes and refusals. Gauges over the last
WINDOW images scored: the drift figure per probability output (PSI against models/drift_reference.json, see
serve/drift.py) and the share of images in the uncertainty band."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from steeldefect.serve import drift

WINDOW = 1000  # images the drift and uncertainty gauges look back over
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
disable_created_metrics()  # no *_created series: the process start time says as much


class Monitor:
    def __init__(self, reference: dict[str, np.ndarray] | None):
        self.registry = r = CollectorRegistry()
        self.reference = reference or {}
        self.requests = Counter(
            "steeldefect_requests", "HTTP requests by endpoint and status", ["endpoint", "code"], registry=r
        )
        seconds = lambda name, what, labels=(): Histogram(name, what, labels, buckets=LATENCY_BUCKETS, registry=r)  # noqa: E731
        self.latency = seconds("steeldefect_request_seconds", "time from request to answer", ["endpoint"])
        self.batch = Histogram("steeldefect_batch_size", "images per engine call", buckets=BATCH_BUCKETS, registry=r)
        self.engine_time = seconds(
            "steeldefect_engine_seconds", "time of one engine call on a batch of preprocessed images"
        )
        self.score_time = seconds(
            "steeldefect_score_seconds", "time of scoring one batch: the engine and the answers (images decoded before)"
        )
        self.decode_time = seconds(
            "steeldefect_decode_seconds",
            "time of decoding and preprocessing one request's images (while the engine scores earlier ones)",
        )
        self.decisions = Counter(
            "steeldefect_decisions", "images by decision (clean / defect)", ["decision"], registry=r
        )
        self.types = Counter("steeldefect_type_decisions", "images by defect type predicted", ["type"], registry=r)
        self.probability = Histogram(
            "steeldefect_probability",
            "probabilities scored, per output",
            ["output"],
            buckets=drift.EDGES[1:],
            registry=r,
        )
        self.psi = Gauge(
            "steeldefect_drift_psi",
            f"population stability index of the last {WINDOW} images' "
            "probabilities against the validation split's (drift_reference.json)",
            ["output"],
            registry=r,
        )
        self.uncertain = Gauge(
            "steeldefect_uncertain_share",
            f"share of the last {WINDOW} images in the uncertainty band (--review-band)",
            registry=r,
        )
        self.review = Counter(
            "steeldefect_review_images", "uncertain images for the review queue, by outcome", ["outcome"], registry=r
        )
        self.window: dict[str, deque] = {}
        self.band_window: deque = deque(maxlen=WINDOW)
        self.lock = threading.Lock()

    def request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def scored(self, rows: list[dict], uncertain: list[bool]) -> None:
        """Count one engine call's readable images (`rows`: their answers) and which were in the band."""
        self.batch.observe(len(rows))
        with self.lock:
            self.band_window.extend(uncertain)
            for row in rows:
                if row.get("predicted") is not None:
                    self.decisions.labels("defect" if row["predicted"] else "clean").inc()
                for name in filter(None, (row.get("classes") or "").split(";")):
                    self.types.labels(name).inc()
                for name, value in row.items():
                    if (name == "probability" or name.startswith("p_")) and value is not None:
                        self.probability.labels(name).observe(value)
                        self.window.setdefault(name, deque(maxlen=WINDOW)).append(value)

    def text(self) -> bytes:
        """The metrics in Prometheus text format, the window gauges brought up to date first."""
        with self.lock:
            if self.band_window:
                self.uncertain.set(sum(self.band_window) / len(self.band_window))
            for name, values in self.window.items():
                if name in self.reference:
                    self.psi.labels(name).set(drift.psi(self.reference[name], drift.histogram(values)))
        return generate_latest(self.registry)
