"""Which models this worker serves, how a request finds them, and whether every worker is ready.

At start-up each configured model is verified (sha256 against its manifest), loaded into
ONNX Runtime and warmed up at every batch size. A model that fails any step is not
served, is named in the log, and keeps ``/readyz`` at 503; the others still serve.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from starlette.requests import Request

from service.errors import ApiError, NotFound, Unavailable
from service.metrics import mark_not_ready, mark_ready, record_model_provider
from service.pipelines import PIPELINES, Pipeline
from service.runtime import LoadedModel, ModelLoadError, SessionConfig, preload_cuda_libraries
from service.settings import Settings
from store_format import IntegrityError, ManifestError, latest_version, list_models, list_versions

log = logging.getLogger(__name__)


def version_to_serve(settings: Settings, name: str) -> int | None:
    """The version of ``name`` to load: its pin, else the highest servable one of ``settings.precision``.

    None leaves the choice to the store's default, the highest servable fp32 version.
    """
    pinned = settings.model_versions.get(name)
    if pinned is not None or settings.precision == "fp32":
        return pinned
    try:
        return latest_version(settings.model_store, name, precision=settings.precision)
    except ManifestError as exc:
        raise ModelLoadError(f"{name}: {exc}") from exc


class ModelRegistry:
    """The pipelines of this worker, by model name, and the models that failed to load."""

    def __init__(self, pipelines: dict[str, Pipeline], failures: dict[str, str]) -> None:
        self.pipelines = pipelines
        # Model name -> why it is not served, in words fit for a client: no file paths and no
        # ONNX Runtime text (the log has those).
        self.failures = failures

    @classmethod
    def load(cls, settings: Settings) -> ModelRegistry:
        names = settings.models or list_models(settings.model_store)
        failures: dict[str, str] = {}
        if not settings.models:
            failures.update(folders_without_manifest(settings.model_store, names))
        if not names and not failures:
            log.error(
                "no models to serve: %s is empty or missing (MODELSERVE_MODEL_STORE); /readyz stays 503",
                settings.model_store,
            )
        preload_cuda_libraries()
        config = SessionConfig.from_settings(settings)  # ProviderUnavailable stops the worker
        pipelines: dict[str, Pipeline] = {}
        for name in names:
            try:
                pipelines[name] = cls._load_one(settings, name, config)
            except ModelLoadError as exc:
                failures[name] = public_reason(exc)
                log.error("model %s is NOT served: %s", name, exc)
        for name in failures:
            mark_not_ready(
                name,
                settings.model_versions.get(name)
                or max(list_versions(settings.model_store, name), default=None),
            )
        return cls(pipelines, failures)

    @staticmethod
    def _load_one(settings: Settings, name: str, config: SessionConfig) -> Pipeline:
        # Only a TensorRT engine needs the largest batch before the pipeline exists (its profile).
        largest = settings.batch_policy(name, on_gpu=True).max_batch_size
        model = LoadedModel.load(
            settings.model_store, name, version_to_serve(settings, name), config, largest
        )
        pipeline_type = PIPELINES.get(model.manifest.task)
        if pipeline_type is None:
            raise ModelLoadError(f"{model.label}: no pipeline serves task {model.manifest.task!r}")
        pipeline = pipeline_type(model, settings)
        started = time.perf_counter()
        sizes = pipeline.warmup()  # with TensorRT, the first engine build (no cache yet) is here
        warmup_s = time.perf_counter() - started
        mark_ready(name, model.version)
        record_model_provider(name, model.version, model.provider)
        log.info(
            "%s ready on %s (asked for %s; session made in %.2f s, warm-up %.2f s; IO binding %s; "
            "%d intra-op threads), warmed up at batch sizes %s",
            model.label,
            model.provider,
            ",".join(config.providers),
            model.session_created_s,
            warmup_s,
            "on" if model.io_binding else "off",
            config.intra_op_threads,
            sizes,
        )
        return pipeline

    @property
    def ready(self) -> bool:
        return bool(self.pipelines) and not self.failures

    def readiness(self) -> dict[str, str]:
        """Each model this worker knows of: "ready", or why it is not served."""
        return {**dict.fromkeys(self.pipelines, "ready"), **self.failures}

    def pipeline(self, name: str) -> Pipeline:
        pipeline = self.pipelines.get(name)
        if pipeline is not None:
            return pipeline
        if not self.pipelines and not self.failures:
            raise Unavailable(
                "no model is loaded: the model store holds none; the server is not ready",
                {"model": name},
                retry_after_s=60,
            )
        if name in self.failures:
            raise Unavailable(
                f"model {name!r} is not available: it failed to load",
                {"model": name, "reason": self.failures[name]},
                retry_after_s=60,
            )
        raise NotFound(f"unknown model {name!r}", {"model": name, "available": sorted(self.pipelines)})

    async def close(self) -> None:
        """At shutdown: every model answers what it still holds (see :meth:`Pipeline.close`)."""
        for pipeline in self.pipelines.values():
            await pipeline.close()


def folders_without_manifest(store: Path, listed: list[str]) -> dict[str, str]:
    """Model folders in ``store`` that no version's manifest.json makes servable, with why.

    The store's own listing passes over such a folder; a model that was meant to be served
    would then silently drop out of the default list. Here it is named, in the log and as
    a failure that keeps /readyz at 503. Hidden folders (a publish in progress) are skipped.
    """
    store = Path(store)
    if not store.is_dir():
        return {}
    found = {}
    for folder in sorted(store.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir() or folder.name in listed:
            continue
        if not any(not entry.name.startswith(".") for entry in folder.iterdir()):
            continue
        log.error(
            "model folder %s holds no version folder with a manifest.json (<name>/<version>/manifest.json): "
            "model %s is NOT served and /readyz stays 503",
            folder,
            folder.name,
        )
        found[folder.name] = "no version of it has a manifest.json"
    return found


def public_reason(exc: ModelLoadError) -> str:
    """Why a model failed to load, for clients: the kind of fault, not the file or library text."""
    cause = exc.__cause__
    if isinstance(cause, IntegrityError):
        return "its model.onnx does not match the sha256 in its manifest"
    if isinstance(cause, ManifestError):
        return "its manifest is missing or invalid, or it has no servable version"
    if cause is not None:
        return "ONNX Runtime could not load its model.onnx"
    return "it does not match its manifest or this server's configuration"


def registry_of(request: Request) -> ModelRegistry:
    """The registry the service put in the app's state (503 while the service is starting)."""
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        raise ApiError("the service is starting", status=503, headers={"Retry-After": "1"})
    return registry


class WorkerBoard:
    """Readiness across worker processes: each ready worker leaves a note in a shared folder.

    BentoML routes a probe to any one worker, but "ready" must mean every worker is. The
    folder is the server's own (``service.server_folder``): no other server's start empties it.
    """

    def __init__(self, directory: str | None, worker_index: int | None, workers: int) -> None:
        self.directory = Path(directory) if directory else None
        self.worker_index = worker_index or 1
        self.workers = workers if self.directory else 1

    def announce_ready(self) -> None:
        if self.directory is not None:
            (self.directory / f"ready-{self.worker_index}").write_text(str(os.getpid()))

    def all_ready(self) -> bool:
        return not self.not_ready()

    def not_ready(self) -> list[int]:
        """The indexes of the workers that have not announced themselves ready (or have died)."""
        if self.directory is None:
            return []
        return [i for i in range(1, self.workers + 1) if not self._alive(self.directory / f"ready-{i}")]

    @staticmethod
    def _alive(note: Path) -> bool:
        try:
            os.kill(int(note.read_text()), 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return False
        except PermissionError:  # exists, owned by someone else
            return True
        return True
