"""The BentoML service, and the one place that wires the service's layers together.

BentoML runs the workers, their start-up and shutdown, ``/livez`` and ``/readyz``, and
``bentoml build``/``containerize``. The layers (docs/batching.md follows a request through them):

- ``service.platform``: settings, CPU budget, the server's folder, error rendering, request ids;
- ``service.inference``: ONNX Runtime sessions, pipelines, batching, the registry, metrics;
- ``service.api``: the routes and their one task handler, the Open Inference Protocol;
- ``service.transport``: connections, the direct lane, the fast path, middleware, and the
  hooks into libraries' internals, each checked at start (``service.transport.hooks``).

A task request reaches the one handler (``service.api.handler``) through one of two adapters:
the app mounted below (ASGI), or the direct lane inside the connection's protocol, which
each worker builds at start from what the app shares with it. The settings that keep
BentoML's per-request cost down are below, each measured in docs/evidence/benchmarks.md.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

import bentoml
from bentoml._internal.context import server_context

from service.api.routes import INFERENCE_ROUTES, create_app
from service.inference.metrics import record_runtime
from service.inference.model_watcher import ModelWatcher
from service.inference.registry import ModelRegistry, WorkerBoard
from service.inference.runtime import ProviderUnavailable, SessionConfig
from service.platform.request_ids import configure_logging
from service.platform.server_folder import leave_server_folder, use_server_folder
from service.platform.settings import cpu_budget, get_settings
from service.transport import direct_lane
from service.transport.connections import install as install_connection_guards
from service.transport.connections import verify_server
from service.transport.fast_path import FASTAPI_HOOKS
from service.transport.hooks import HookMissing, verify
from service.transport.middleware import JsonErrors

log = logging.getLogger(__name__)

settings = get_settings()
# BentoML sets the root logger to WARNING; model loading, readiness and failed requests are
# worth an INFO line, each with its request id (as JSON lines with MODELSERVE_LOG_FORMAT=json).
configure_logging(settings.log_format)
# This server's metrics and ready notes in a folder of its own, which no other server's start
# can empty (service.platform.server_folder). Before the service below creates any metric.
use_server_folder(is_worker=server_context.worker_index is not None)
# BentoML imports this module before it starts any worker: a provider that can never work
# here (MODELSERVE_PROVIDER=cuda without a GPU or the GPU build) stops `bentoml serve` now,
# with one message and exit status 1, instead of failing in every worker it restarts.
try:
    SessionConfig.from_settings(settings)
except ProviderUnavailable as exc:
    raise SystemExit(f"modelserve cannot start: {exc}") from None
# Header, idle and body timeouts, and a drain on SIGTERM that answers instead of resetting:
# the uvicorn server BentoML builds in each worker, after importing this module, is a guarded
# one (service.transport.connections; a bad MODELSERVE_*_TIMEOUT_S stops start-up here).
# Every hook into a library's internals is checked here (and the rest in each worker at start):
# one missing stops `bentoml serve` with a line naming it, rather than a server without them.
try:
    verify(FASTAPI_HOOKS)
    install_connection_guards()
except HookMissing as exc:
    raise SystemExit(f"modelserve cannot start: {exc}") from None
app = create_app()


@bentoml.service(
    name="modelserve",
    workers=settings.worker_count,
    traffic={
        # BentoML arms a timer per request for this and keeps its context alive until it
        # fires; a short one keeps the heap (and GC pauses) small. The task handler answers
        # 504 at MODELSERVE_HTTP_TIMEOUT_S itself (the same on both paths); this is a backstop
        # for the other routes, a second later.
        "timeout": settings.http_timeout_s + 1,
    },
    # Per-request Prometheus middleware off; the service records its metrics per batch
    # and serves them on its own /metrics.
    metrics={"enabled": False},
    logging={"access": {"enabled": settings.access_log}},
    # OpenTelemetry records spans per request even when nothing samples them.
    tracing={"excluded_urls": INFERENCE_ROUTES},
)
@bentoml.asgi_app(app, path="/")
class ModelService:
    """Serves every model in the model store; see README.md for the endpoints."""

    def __init__(self) -> None:
        self.registry = ModelRegistry.load(settings)
        self.board = WorkerBoard(
            os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
            server_context.worker_index,
            settings.worker_count,
        )
        app.state.registry = self.registry
        app.state.is_ready = self.__is_ready__
        app.state.readiness = self.readiness

    def _open_direct_lane(self) -> str:
        """Check the hooks only a built server shows, and give its connections the direct lane
        (or none, and why). A missing hook stops this worker at once, naming it."""
        try:
            config = verify_server()
        except HookMissing as exc:
            log.critical("modelserve cannot start: %s", exc)
            logging.shutdown()
            os._exit(3)  # not SystemExit: uvicorn's lifespan would log it and serve on
        lane, why = direct_lane.build(config.loaded_app, app, app.state.lane_parts, settings.direct_lane)
        config.use_lane(lane)
        if lane is None:
            log.info("direct lane off, every request goes through ASGI: %s", why)
        else:
            log.info("direct lane on for %s", ", ".join(lane.paths.values()))
        return why

    def _record_sizing(self, lane: str) -> None:
        """Say how this server was sized, in the log and in /metrics (modelserve_runtime_info)."""
        budget = cpu_budget()
        providers = ",".join(sorted({p.model.provider for p in self.registry.pipelines.values()})) or "none"
        log.info(
            "worker %s of %d: %d intra-op thread(s) per session on %s; CPU budget %g (%s; quota %s, "
            "affinity %d)",
            server_context.worker_index,
            settings.worker_count,
            settings.threads_per_session,
            providers,
            budget.cpus,
            budget.source,
            "none" if budget.quota_cpus is None else f"{budget.quota_cpus:g}",
            budget.affinity_cpus,
        )
        record_runtime(
            settings.worker_count, settings.threads_per_session, providers, budget.cpus, budget.source, lane
        )

    @bentoml.on_startup
    def settle(self) -> None:
        # The framework and the models are loaded for good: take them out of every future
        # garbage collection, which otherwise walks them again and again under load.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*settings.gc_thresholds)
        self._record_sizing(self._open_direct_lane())
        if self.registry.ready:
            self.board.announce_ready()
        # New model versions are swapped in by a background task of this worker's event loop.
        self.watcher = ModelWatcher(
            self.registry, settings.model_poll_s, settings.model_release_grace_s, self.board.announce_ready
        ).start()

    def __is_ready__(self) -> bool:
        return self.registry.ready and self.board.all_ready()

    def readiness(self) -> dict[str, Any]:
        """Why this server is not ready, for /readyz's 503: each model's state, and late workers."""
        models = self.registry.readiness()
        faults = [f"model {name!r}: {reason}" for name, reason in models.items() if reason != "ready"]
        if not models:
            faults.append("the model store holds no model")
        late = self.board.not_ready()
        if late:
            faults.append(f"worker(s) {late} not ready yet")
        error = "not ready: " + "; ".join(faults) if faults else "not ready"
        return {"error": error, "detail": {"models": models, "workers_not_ready": late}}

    @bentoml.on_shutdown
    async def close(self) -> None:
        # Requests still queued get a 503 now rather than no answer ever.
        watcher = getattr(self, "watcher", None)
        if watcher is not None:
            await watcher.stop()
        await self.registry.close()
        leave_server_folder()


def readiness() -> dict[str, Any]:
    """/readyz's explanation of a 503: the answer of this worker's service, once it is made."""
    explain = getattr(app.state, "readiness", None)
    return explain() if explain else {"error": "not ready: the models are still loading"}


# Framework answers (unknown paths, /readyz while not ready) become JSON objects too.
ModelService.add_asgi_middleware(JsonErrors, explain={"/readyz": readiness})
