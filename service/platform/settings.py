"""Every knob of the service, in one typed object read from ``MODELSERVE_*`` variables.

The defaults serve the committed ``model_store/`` out of the box. Values are checked once,
at start-up, and a bad one stops the server with a message that says how to fix it.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, NonNegativeInt, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as EnvParseError

from service.platform.cpu_budget import CpuBudget, detect_cpu_budget

# max_batch_size on a GPU when the settings leave it unset (64 on the CPU): a GPU's throughput
# keeps growing with the batch long after a CPU's has levelled off (docs/batching.md).
GPU_MAX_BATCH_SIZE = 256


class BatchPolicy(BaseModel):
    """How requests for one model are merged into ONNX Runtime calls (see docs/batching.md)."""

    max_batch_size: int = Field(
        64,
        ge=1,
        le=4096,
        description=(
            "Most items (images, rows, samples) in one ONNX Runtime call. Requests are merged up "
            "to this; a larger request is split into several calls."
        ),
    )
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description=(
            "Longest a formed batch waits for more items, and only while the model is busy: a "
            "request that finds the model idle runs at once. 0 = never wait."
        ),
    )
    max_queue_size: int = Field(
        16384,
        ge=1,
        description=(
            "Most items waiting per model and worker (a bound on memory); beyond it requests get "
            "503 + Retry-After. Within it, the queue takes what drains within queue_timeout_s at "
            "its measured rate."
        ),
    )
    queue_timeout_s: float = Field(
        1.5, gt=0, description="A queued item older than this is answered 503 instead of being run late."
    )
    run_in_thread: bool | None = Field(
        None,
        description=(
            "Run ONNX Runtime on a helper thread, so the event loop keeps parsing requests "
            "meanwhile, or inline on the event loop, which saves a thread hand-off per batch "
            "(~0.15 ms of CPU). Unset: inline for the microsecond models (classifier, generator), "
            "a thread for the forecaster, whose batches take milliseconds."
        ),
    )
    max_concurrent_batches: int | None = Field(
        1,
        ge=1,
        le=64,
        description=(
            "Batches of one model that may run at once in one worker (on that many threads; only "
            "with run_in_thread). 1 measured best on 2 cores with 2 workers: more threads than "
            "cores lengthened the forecaster's tail (docs/evidence/benchmarks.md, settings sweep)."
        ),
    )


class CudaOptions(BaseModel):
    """CUDA execution provider options (ONNX Runtime's names in docs/gpu.md)."""

    device_id: int = Field(
        0,
        ge=0,
        le=63,
        description="Which GPU the sessions run on (CUDA's numbering, after CUDA_VISIBLE_DEVICES).",
    )
    gpu_mem_limit_mb: int = Field(
        0,
        ge=0,
        description="Cap on the CUDA memory arena of each session, in MiB; 0 = no cap (the whole GPU).",
    )
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        "HEURISTIC",
        description=(
            "How cuDNN picks convolution algorithms. EXHAUSTIVE (ONNX Runtime's default) "
            "benchmarks every algorithm at the first call of each input shape; batches here come "
            "in every size from 1 to max_batch_size (and forecaster rows in every length), so "
            "that cost would recur on live requests long after warm-up. HEURISTIC asks cuDNN's "
            "heuristics instead, once."
        ),
    )
    do_copy_in_default_stream: bool = Field(
        True,
        description=(
            "Copies on CUDA's default stream, ordered with the compute: ONNX Runtime's default "
            "and the safe choice while more than one session shares a GPU."
        ),
    )


class TensorRtOptions(BaseModel):
    """TensorRT execution provider options, used only with MODELSERVE_TENSORRT=true."""

    engine_cache_path: Path = Field(
        Path("trt_engine_cache"),
        description=(
            "Built engines are kept here and reused at the next start (a build takes seconds to minutes)."
        ),
    )
    fp16: bool = Field(
        False, description="Let TensorRT pick fp16 kernels where it judges them accurate enough."
    )


class Settings(BaseSettings):
    """Service configuration. Each field is read from ``MODELSERVE_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="MODELSERVE_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    model_store: Path = Field(
        Path("model_store"), description="Folder holding <name>/<version>/{model.onnx,manifest.json}."
    )
    models: Annotated[list[str], NoDecode] = Field(
        [], description="Models to serve; empty = every model in the store."
    )
    model_versions: dict[str, int] = Field(
        {},
        description="Pin versions, e.g. '{\"classifier\": 1}'; unpinned models serve their highest version.",
    )
    precision: Literal["fp32", "fp16"] = Field(
        "fp32",
        description=(
            'Serve each model\'s highest servable version of this precision ("fp16": the variants '
            "that python -m training export-fp16 publishes); a pin in model_versions still wins."
        ),
    )
    provider: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description=(
            'Execution provider: "auto" (CUDA when a GPU and onnxruntime-gpu are present), "cpu", "cuda".'
        ),
    )
    cuda: CudaOptions = Field(
        CudaOptions(),
        description=(
            "CUDA provider options, e.g. MODELSERVE_CUDA__DEVICE_ID=1, "
            "MODELSERVE_CUDA__GPU_MEM_LIMIT_MB=4096."
        ),
    )
    tensorrt: bool = Field(
        False,
        description="Put TensorRT before CUDA when this ONNX Runtime has it (MODELSERVE_TRT__* options).",
    )
    trt: TensorRtOptions = Field(
        TensorRtOptions(),
        description="TensorRT options (MODELSERVE_TRT__*), used only with MODELSERVE_TENSORRT=true.",
    )
    allow_cpu_fallback: bool = Field(
        False,
        description=(
            "Serve on the CPU when a GPU was asked for and ONNX Runtime fell back to the CPU (a "
            "CUDA/cuDNN mismatch does that silently). Off: such a model is not served, /readyz is "
            "503."
        ),
    )
    io_binding: Literal["auto", "on", "off"] = Field(
        "auto",
        description=(
            'Bind inputs and outputs (one copy to the device per batch, one back): "auto" = on a GPU only.'
        ),
    )
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="HTTP worker processes; 0 = one per whole CPU the process may use (cgroup quota or "
        "affinity, rounded down).",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="ONNX Runtime intra-op threads per session; 0 = the usable CPUs shared evenly over "
        "the workers (at least 1).",
    )
    batching: bool = Field(
        True,
        description=("Batching on or off (off: each request is one ONNX Runtime call, still queue-bounded)."),
    )
    batch: BatchPolicy = Field(
        BatchPolicy(), description="The default batch policy of every model (MODELSERVE_BATCH__<FIELD>)."
    )
    batch_overrides: dict[str, BatchPolicy] = Field(
        {},
        description=(
            "Per-model batch policies, each a full policy, e.g. "
            'MODELSERVE_BATCH_OVERRIDES=\'{"forecaster": {"max_batch_size": 16}}\'.'
        ),
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 beyond it)."
    )
    max_items_per_request: int = Field(
        1024, ge=1, description="Most items (images, rows, labels) in one request (413 beyond it)."
    )
    max_series_length: int = Field(
        0,
        ge=0,
        description=(
            "Longest forecaster history row accepted, 400 beyond it (0 = no cap per row: a row "
            "longer than the model's window is answered from its most recent window weeks)."
        ),
    )
    max_series_points_per_request: int = Field(
        131_072,
        ge=1,
        description=(
            "Most history values (all rows together) in one forecaster request (413 beyond it). "
            "The forecaster's work grows with rows x length, and a request must finish well "
            "inside http_timeout_s: the largest request the default admits takes about 0.5 s "
            "on one CPU core."
        ),
    )
    max_image_pixels: int = Field(
        16_000_000,
        ge=64,
        description=(
            "Largest decoded image for /classify_image, in pixels (guards against decompression bombs)."
        ),
    )
    http_timeout_s: float = Field(
        2.0,
        gt=0,
        description=(
            "BentoML's own per-request timeout (seconds). It arms a timer per request that keeps "
            "the request's objects alive until it fires, so a long one grows the heap under load "
            "and lengthens garbage-collection pauses; the batch queue_timeout_s is the real "
            "deadline."
        ),
    )
    max_connection_age_s: float = Field(
        2.0,
        ge=0,
        description=(
            "With several workers, a keep-alive connection is closed (Connection: close on its "
            "next response) once it is about this old, so that connections spread evenly over the "
            "workers instead of staying where a burst of connects happened to land. 0 = never."
        ),
    )
    max_inflight_per_worker: int = Field(
        512,
        ge=0,
        description=(
            "Requests one worker holds at once (task routes, V2; /metrics is never refused); "
            "beyond it a request is answered 503 + Retry-After at once "
            "(service.transport.middleware.InFlightLimit). A worker answers about 1,000-4,500 "
            "/classify requests a second, so 512 in flight is already 0.1-0.3 s of queueing: more "
            "would only wait longer, and past the batch queue timeout (1.5 s) they fail anyway. 0 "
            "= no limit."
        ),
    )
    overload_retry_after_s: int = Field(
        1, ge=1, le=3600, description="What refused clients are told to wait, in whole seconds (Retry-After)."
    )
    recycle_pace: float = Field(
        4.0,
        ge=0,
        le=1000,
        description=(
            "Connection recycling, in a worker holding more than 64 connections, closes at most "
            "one per recycle_pace x (connections held) requests: every close is a reconnect, and "
            "a worker accepts one connection per turn of its event loop "
            "(service.transport.middleware.ConnectionRecycler). 0 = no pacing."
        ),
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description=(
            "HTTP connections (service/transport/connections.py). Longest wait from a request's "
            "first byte to the end of its headers; then 408 and the connection is closed."
        ),
    )
    idle_timeout_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Longest a connection may stay open with no request under way (keep-alive idle).",
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Longest pause while a request body arrives; then 408 and the connection is closed.",
    )
    body_min_rate_bps: int = Field(
        1024,
        ge=0,
        description=(
            "Slowest mean rate a request body may arrive at (bytes/s), checked once it has been "
            "arriving for body_timeout_s; then 408 and the connection is closed. 0 = no minimum."
        ),
    )
    drain_timeout_s: float = Field(
        5.0,
        gt=0,
        le=120,
        description=(
            "After SIGTERM, how long requests in flight may take before they are answered 503; "
            "requests arriving meanwhile on open connections get 503 + Connection: close."
        ),
    )
    linger_s: float = Field(
        2.0,
        ge=0,
        le=30,
        description=(
            "Before a socket is closed, how long what the client still sends is read and dropped, "
            "so that a reset never destroys an answer the client has not read yet."
        ),
    )
    max_header_line_bytes: int = Field(
        8192,
        ge=1024,
        le=1024 * 1024,
        description=(
            "Request headers (service/transport/connections.py): longest header line (name, colon, "
            "value) while it arrives; past it the request is answered 431 and the connection "
            "closed. A request line past it is answered 400, as one the parser refuses. Each "
            "header bound is checked as the bytes arrive, so what a connection holds of an "
            "unfinished request stays bounded whatever the client sends."
        ),
    )
    max_header_bytes: int = Field(
        65536,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Most bytes of the request line and headers together; past it 431, connection closed.",
    )
    max_header_count: int = Field(
        100,
        ge=8,
        le=10_000,
        description="Most header lines in one request; past it 431 and the connection is closed.",
    )
    gc_thresholds: tuple[NonNegativeInt, NonNegativeInt, NonNegativeInt] = Field(
        (700, 100, 100),
        description=(
            "Python's garbage-collection thresholds in each worker, set after start-up "
            "(gc.set_threshold): allocations between young collections, then young collections "
            "per middle one and middle ones per full one. Python's (700, 10, 10) run a full "
            "collection so often under load, once the framework and models are frozen out of it, "
            "that at 512 connections the workers spent half of each second in GC with pauses up "
            "to 159 ms; (700, 100, 100) measured 290-299 ms/s, longest pauses 63-74 ms, a 15-20% "
            "lower p99 and 5% more memory (docs/evidence/reliability.md)."
        ),
    )
    access_log: bool = Field(
        False,
        description=(
            "One log line per request (BentoML's access log). Off by default: it costs throughput, "
            "and on it turns the direct lane off (the access log is a middleware the lane would skip)."
        ),
    )
    direct_lane: bool = Field(
        True,
        description=(
            "JSON task requests answered by the connection's protocol, below ASGI "
            "(service/transport/direct_lane.py): the same answers for a third to half of the CPU. "
            "Off: every request goes through ASGI. (It turns itself off, with a log line, when a "
            "middleware it would skip is added.)"
        ),
    )
    log_failed_burst: int = Field(
        20,
        ge=0,
        le=100_000,
        description=(
            "Failed requests' log lines (service.platform.errors.log_failed_request): of each kind "
            "(status, path, and the error's wording with its numbers left out) the first this many "
            "in each log_failed_interval_s are written, then one line with the count of the rest, "
            "so that a flood of bad requests cannot fill a disk or drown the log; the metrics "
            "still count every one. 0 = a line for every failed request."
        ),
    )
    log_failed_interval_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="The interval of log_failed_burst, in seconds.",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description=(
            "The service's own log lines (model loading, failed requests with their request id): "
            '"text" in BentoML\'s format, or "json", one JSON object per line, for log collectors.'
        ),
    )
    model_poll_s: float = Field(
        10.0,
        ge=0,
        description=(
            "Every this many seconds each worker looks in the model store for models new to it "
            "(unless MODELSERVE_MODELS names the models) and for a newer servable version of each "
            "unpinned model (or, when its version's folder was removed, the one below it), loads, "
            "verifies and warms it in the background, and swaps it in (docs/model-lifecycle.md). "
            "0 = never: the models and versions loaded at start-up are served until the server stops."
        ),
    )
    model_release_grace_s: float = Field(
        5.0,
        ge=0,
        description=(
            "After a swap, how long the replaced version keeps answering what it already holds "
            "(and requests that asked for it by number) before it is closed and its session "
            "freed. It must cover a queued request's longest life: the batch queue timeout and "
            "the HTTP timeout."
        ),
    )

    @field_validator("models", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        """Accept ``classifier,forecaster`` as well as ``["classifier", "forecaster"]``."""
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        for name in self.batch_overrides:
            if self.models and name not in self.models:
                raise ValueError(
                    f"MODELSERVE_BATCH_OVERRIDES names {name!r}, which is not in MODELSERVE_MODELS"
                )
        for name, policy in {"default": self.batch, **self.batch_overrides}.items():
            if policy.max_queue_size < self.max_items_per_request:
                raise ValueError(
                    f"batch policy {name!r}: max_queue_size ({policy.max_queue_size}) is smaller "
                    f"than MODELSERVE_MAX_ITEMS_PER_REQUEST ({self.max_items_per_request}), so the "
                    "largest allowed request could never be queued: raise the queue size or "
                    "lower the item limit"
                )
        if self.max_header_line_bytes > self.max_header_bytes:
            raise ValueError(
                f"MODELSERVE_MAX_HEADER_LINE_BYTES ({self.max_header_line_bytes}) is larger than "
                f"MODELSERVE_MAX_HEADER_BYTES ({self.max_header_bytes}), the bound on all the headers "
                "together, so it could never be reached: lower the line bound or raise the total"
            )
        longest_wait = max(
            [self.http_timeout_s, *(p.queue_timeout_s for p in (self.batch, *self.batch_overrides.values()))]
        )
        if self.model_release_grace_s < longest_wait:
            raise ValueError(
                f"MODELSERVE_MODEL_RELEASE_GRACE_S ({self.model_release_grace_s:g}) is shorter than a "
                f"request may hold a model version ({longest_wait:g} s: the longest batch queue timeout "
                "or the HTTP timeout), so a replaced version could be closed under a request still "
                "waiting for it: raise the grace period"
            )
        return self

    def batch_policy(self, model: str, on_gpu: bool = False) -> BatchPolicy:
        """``model``'s policy; on a GPU, a max_batch_size left unset is GPU_MAX_BATCH_SIZE."""
        policy = self.batch_overrides.get(model, self.batch)
        if on_gpu and "max_batch_size" not in policy.model_fields_set:
            return policy.model_copy(update={"max_batch_size": GPU_MAX_BATCH_SIZE})
        return policy

    @property
    def graceful_shutdown_s(self) -> int:
        """uvicorn's bound on a worker's shutdown: the drain, the last lingering close, a margin."""
        return math.ceil(self.drain_timeout_s + self.linger_s + 1)

    @property
    def worker_count(self) -> int:
        """MODELSERVE_WORKERS, or one worker per whole CPU the process may use (cgroup quota,
        affinity): a pod limited to 1 CPU on a 64-core node starts one worker, not 64."""
        return self.workers or cpu_budget().workers

    @property
    def threads_per_session(self) -> int:
        """MODELSERVE_INTRA_OP_THREADS, or the whole CPUs shared evenly over the workers."""
        return self.intra_op_threads or cpu_budget().threads_per_worker(self.worker_count)


@lru_cache(maxsize=1)
def cpu_budget() -> CpuBudget:
    """The CPUs this process may really use, read once (see service/platform/cpu_budget.py)."""
    return detect_cpu_budget()


class SettingsError(RuntimeError):
    """The environment holds a value the service cannot start with."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Raises :class:`SettingsError` with the fix."""
    try:
        return Settings()
    except EnvParseError as exc:  # a value that should be JSON is not
        raise SettingsError(f"invalid service configuration: {exc} (expected JSON)") from None
    except ValidationError as exc:
        problems = "; ".join(
            (f"MODELSERVE_{'__'.join(str(p) for p in err['loc']).upper()}: " if err["loc"] else "")
            + err["msg"]
            for err in exc.errors()
        )
        raise SettingsError(f"invalid service configuration: {problems}") from None
