"""Per-model Prometheus metrics, recorded per batch, correct across worker processes.

BentoML's own metrics middleware is switched off (it costs ~6% of a request's CPU and
records per request); these are recorded once per batch instead. Under ``bentoml serve``
every worker writes to ``PROMETHEUS_MULTIPROC_DIR`` (set by BentoML) and ``/metrics``
aggregates all workers with prometheus_client's multi-process collector.
"""

from __future__ import annotations

import asyncio
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from service.inference.batcher import BatchStats

_NS = "modelserve"
_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Inference series are labelled by model and version.
_BY_VERSION = ["model", "version"]
REQUESTS = Counter(f"{_NS}_requests", "Requests answered successfully", _BY_VERSION)
ITEMS = Counter(f"{_NS}_items", "Items (images, rows, samples) inferred", _BY_VERSION)
ERRORS = Counter(f"{_NS}_errors", "Requests answered with an error, by HTTP status", [*_BY_VERSION, "status"])
REJECTED = Counter(
    f"{_NS}_rejected",
    "Requests refused because the model's queue was full (also counted in errors, as 503)",
    _BY_VERSION,
)
BATCHES = Counter(f"{_NS}_batches", "ONNX Runtime calls (batches run)", _BY_VERSION)
BATCH_SIZE = Histogram(
    f"{_NS}_batch_size", "Items per ONNX Runtime call", _BY_VERSION, buckets=_BATCH_BUCKETS
)
QUEUE_WAIT = Histogram(
    f"{_NS}_queue_wait_seconds",
    "Wait of the oldest request in each batch before it ran",
    ["model", "version"],
    buckets=_LATENCY_BUCKETS,
)
INFERENCE = Histogram(
    f"{_NS}_inference_seconds", "Wall time of each ONNX Runtime call", _BY_VERSION, buckets=_LATENCY_BUCKETS
)
PADDED = Histogram(
    f"{_NS}_padded_fraction",
    "Fraction of each forecaster batch that is padding",
    ["model", "version"],
    buckets=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
QUEUED = Gauge(
    f"{_NS}_queued_items", "Items waiting, summed over workers", _BY_VERSION, multiprocess_mode="livesum"
)
READY = Gauge(
    f"{_NS}_model_ready",
    "1 when the model is loaded, verified and warm",
    ["model", "version"],
    multiprocess_mode="livemax",
)

RUNTIME = Gauge(
    f"{_NS}_runtime_info",
    "1, labelled with how this server was sized: workers, ONNX Runtime intra-op threads per session, "
    "execution provider, the CPUs the process may use (cgroup quota or affinity), and whether the "
    "direct lane is on (direct_lane_reason: why not)",
    ["workers", "intra_op_threads", "provider", "cpus", "cpu_source", "direct_lane", "direct_lane_reason"],
    multiprocess_mode="livemax",
)

MODEL_PROVIDER = Gauge(
    f"{_NS}_model_provider_info",
    "1, labelled with the execution provider each model's session really got (it can differ from "
    "the one asked for when ONNX Runtime falls back to the CPU)",
    ["model", "version", "provider"],
    multiprocess_mode="livemax",
)

# The model lifecycle (docs/model-lifecycle.md): counted by each worker, summed over workers.
LOAD_FAILURES = Counter(
    f"{_NS}_model_load_failures",
    "Model versions that failed verification or loading and are not served, by reason "
    "(manifest, gate, sha256, graph, onnxruntime, warmup, task); counted once per worker and "
    "version until its files change",
    ["model", "version", "reason"],
)
SWAPS = Counter(
    f"{_NS}_model_swaps",
    "Versions swapped in while serving (from_version is empty for a model that was not served)",
    ["model", "from_version", "to_version"],
)
RELEASES = Counter(
    f"{_NS}_model_releases",
    "Replaced versions closed after their grace period, their ONNX Runtime session freed",
    ["model", "version"],
)


class ModelMetrics:
    """The metric children of one model, bound once so the hot path does no label lookups."""

    def __init__(self, model: str, version: int) -> None:
        # Every series is labelled by version too, so a new version's traffic can be watched
        # beside the old one's while both are served (a live swap, a canary).
        self.model, self.version = model, str(version)
        model, version = self.model, self.version
        self._requests = REQUESTS.labels(model, version)
        self._finished = 0  # requests finished and not yet counted in _requests
        self._items = ITEMS.labels(model, version)
        self._rejected = REJECTED.labels(model, version)
        self._batches = BATCHES.labels(model, version)
        self._batch_size = BATCH_SIZE.labels(model, version)
        self._queue_wait = QUEUE_WAIT.labels(model, version)
        self._inference = INFERENCE.labels(model, version)
        self._padded = PADDED.labels(model, version)
        self._queued = QUEUED.labels(model, version)

    def batch_done(self, stats: BatchStats, queued_after: int) -> None:
        self._batches.inc()
        self._batch_size.observe(stats.items)
        self._queue_wait.observe(stats.queue_wait_s)
        self._inference.observe(stats.run_s)
        self._queued.set(queued_after)
        if not stats.failed:
            self._items.inc(stats.items)

    def request_done(self) -> None:
        # Counted once per turn of the event loop, not per request: in multi-process mode each
        # increment is a locked write to a memory-mapped file (about 4% of a /classify
        # request's CPU), and the requests of a batch all finish in the same turn.
        self._finished += 1
        if self._finished == 1:
            try:
                asyncio.get_running_loop().call_soon(self._count_finished)
            except RuntimeError:  # no event loop (a script, a test): count at once
                self._count_finished()

    def _count_finished(self) -> None:
        finished, self._finished = self._finished, 0
        self._requests.inc(finished)

    def error(self, status: int) -> None:
        ERRORS.labels(self.model, self.version, str(status)).inc()

    def rejected(self) -> None:
        self._rejected.inc()

    def padded_fraction(self, fraction: float) -> None:
        self._padded.observe(fraction)


def record_runtime(
    workers: int, intra_op_threads: int, provider: str, cpus: float, cpu_source: str, lane: str
) -> None:
    """One series for the whole server: every worker sets the same labels. ``lane``: "on", or
    why the direct lane is off."""
    on = "on" if lane == "on" else "off"
    RUNTIME.labels(
        str(workers), str(intra_op_threads), provider, f"{cpus:g}", cpu_source, on, "" if on == "on" else lane
    ).set(1)


def record_model_provider(model: str, version: int, provider: str) -> None:
    MODEL_PROVIDER.labels(model, str(version), provider).set(1)


def mark_ready(model: str, version: int) -> None:
    READY.labels(model, str(version)).set(1)


def mark_not_ready(model: str, version: int | None) -> None:
    """A ready gauge of 0 for a model that failed to load: the series an operator alerts on."""
    READY.labels(model, "" if version is None else str(version)).set(0)


def record_load_failure(model: str, version: int | None, reason: str) -> None:
    LOAD_FAILURES.labels(model, "" if version is None else str(version), reason).inc()


def record_swap(model: str, from_version: int | None, to_version: int) -> None:
    SWAPS.labels(model, "" if from_version is None else str(from_version), str(to_version)).inc()


def record_release(model: str, version: int, provider: str, still_served: bool = False) -> None:
    """A replaced version is gone from this worker: not ready any more, on no provider, nothing
    queued (unless a pipeline of the same version number is served again)."""
    if not still_served:
        READY.labels(model, str(version)).set(0)
        MODEL_PROVIDER.labels(model, str(version), provider).set(0)
        QUEUED.labels(model, str(version)).set(0)
    RELEASES.labels(model, str(version)).inc()


def exposition() -> tuple[bytes, str]:
    """The Prometheus text of every worker (or of this process outside ``bentoml serve``)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
