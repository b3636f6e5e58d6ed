"""Which models this worker serves, how a request finds them, and whether every worker is ready.

At start-up each configured model is verified (sha256 against its manifest), loaded into
ONNX Runtime and warmed up at every batch size. A model that fails any step is not
served, is named in the log, and keeps ``/readyz`` at 503; the others still serve.

A model that first appears in the store while the server runs (found by the model watcher) is
served once it loads; if it fails, it is reported like one that failed at start-up (its ready
route answers 503 with why, the log, ``modelserve_model_load_failures_total``) but does not take
``/readyz`` to 503: every replica watching the store would drop out of rotation at once, over a
model none of them served yet (see :attr:`ModelRegistry.appeared`).

While serving, ``service.inference.model_watcher`` swaps a newer version in with :meth:`ModelRegistry.swap_in`
(one assignment: a request that already holds the old pipeline finishes there) and closes
the old one after a grace period with :meth:`ModelRegistry.release`. Versions that failed are
remembered in :class:`FailedVersions` so that they are not tried again until their files change.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

from service.inference.metrics import (
    mark_not_ready,
    mark_ready,
    record_load_failure,
    record_model_provider,
    record_release,
    record_swap,
)
from service.inference.pipelines import PIPELINES, Pipeline
from service.inference.runtime import (
    GraphMismatch,
    LoadedModel,
    ModelLoadError,
    SessionConfig,
    preload_cuda_libraries,
)
from service.inference.tensor_pipeline import TensorPipeline
from service.platform.errors import NotFound, Unavailable
from service.platform.settings import Settings
from store_format import (
    MANIFEST_FILE,
    MODEL_FILE,
    TENSOR_TASK,
    IntegrityError,
    ManifestError,
    latest_version,
    list_models,
    list_versions,
)

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


class WarmupFailed(ModelLoadError):
    """A model version loaded but failed its warm-up run."""


def load_pipeline(settings: Settings, name: str, version: int | None, config: SessionConfig) -> Pipeline:
    """``name`` at ``version`` (None: the store's default) verified, loaded and warmed up.

    Nothing is marked ready here: the caller decides when the pipeline is served. Safe to
    run on a helper thread (the event loop keeps serving meanwhile).
    """
    # Only a TensorRT engine needs the largest batch before the pipeline exists (its profile).
    largest = settings.batch_policy(name, on_gpu=True).max_batch_size
    model = LoadedModel.load(settings.model_store, name, version, config, largest)
    # A model imported with `python -m store_format import` (task "tensor") is served by the
    # generic pipeline; the built-in models by their task's own.
    pipeline_type = (
        TensorPipeline if model.manifest.task == TENSOR_TASK else PIPELINES.get(model.manifest.task)
    )
    if pipeline_type is None:
        raise ModelLoadError(f"{model.label}: no pipeline serves task {model.manifest.task!r}")
    pipeline = pipeline_type(model, settings)
    started = time.perf_counter()
    try:
        sizes = pipeline.warmup()  # with TensorRT, the first engine build (no cache yet) is here
    except Exception as exc:  # ONNX Runtime's own errors, or a wrong number of results
        raise WarmupFailed(f"{model.label}: warm-up failed: {exc}") from exc
    warmup_s = time.perf_counter() - started
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


def failure_reason(exc: ModelLoadError) -> str:
    """A short label for why a version failed (the ``reason`` of modelserve_model_load_failures)."""
    if isinstance(exc, GraphMismatch):
        return "graph"
    if isinstance(exc, WarmupFailed):
        return "warmup"
    cause = exc.__cause__
    if isinstance(cause, IntegrityError):
        return "sha256"
    if isinstance(cause, ManifestError):
        return "manifest"
    if cause is not None:
        return "onnxruntime"
    return "task"


def version_fingerprint(store: Path, name: str, version: int) -> str:
    """What a version's files are now: its manifest's bytes and its model file's size and time.

    A version that failed is not tried again while this stays the same; replacing either file
    (a fixed model.onnx, a corrected manifest) makes it a candidate again.
    """
    folder = Path(store) / name / str(version)
    digest = hashlib.sha256()
    try:
        digest.update((folder / MANIFEST_FILE).read_bytes())
    except OSError:
        digest.update(b"no manifest")
    try:
        stat = (folder / MODEL_FILE).stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    except OSError:
        digest.update(b"no model file")
    return digest.hexdigest()


class FailedVersions:
    """Versions that failed verification or loading, by (model, version), with their files' fingerprint.

    Each failure is logged and counted in /metrics once, when it is found, not at every poll.
    """

    def __init__(self, store: Path) -> None:
        self.store = Path(store)
        self._fingerprints: dict[tuple[str, int], str] = {}
        self._reasons: dict[tuple[str, int], str] = {}

    def known(self, name: str, version: int, fingerprint: str) -> bool:
        """Whether this version, with exactly these files, has failed before."""
        return self._fingerprints.get((name, version)) == fingerprint

    def reason(self, name: str, version: int) -> str | None:
        """The ``failure_reason`` label of this version's last failure, if it failed."""
        return self._reasons.get((name, version))

    def add(self, name: str, version: int | None, reason: str, why: object, fingerprint: str = "") -> None:
        if version is not None:
            key = (name, version)
            self._fingerprints[key] = fingerprint or version_fingerprint(self.store, name, version)
            self._reasons[key] = reason
        record_load_failure(name, version, reason)
        label = name if version is None else f"{name}/{version}"
        log.error("model version %s failed (%s) and is NOT served: %s", label, reason, why)


class ModelRegistry:
    """The pipelines of this worker, by model name, and the models that failed to load."""

    def __init__(
        self,
        pipelines: dict[str, Pipeline],
        failures: dict[str, str],
        settings: Settings | None = None,
        config: SessionConfig | None = None,
        failed_versions: FailedVersions | None = None,
    ) -> None:
        # The version each model serves to new requests: replaced whole, in one assignment.
        self.pipelines = pipelines
        # Model name -> why it is not served, in words fit for a client: no file paths and no
        # ONNX Runtime text (the log has those).
        self.failures = failures
        # Replaced versions finishing what they hold until released, oldest first, by model. A
        # list, not a dict by version: a version folder removed and published again can be
        # replaced twice within one grace period.
        self.retiring: dict[str, list[Pipeline]] = {}
        self.settings = settings
        self.config = config
        self.failed_versions = failed_versions or FailedVersions(settings.model_store if settings else Path())
        # Models that first appeared in the store while serving and are not served yet: their
        # failures are reported (self.failures) but do not count against readiness. A server in
        # rotation stays there over a model it never served; every replica reading the same
        # store would otherwise leave at once, and the models they do serve with them.
        self.appeared: set[str] = set()

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
        failed = FailedVersions(settings.model_store)
        pipelines: dict[str, Pipeline] = {}
        for name in names:
            version = None
            try:
                version = resolve_version(settings, name)
                pipelines[name] = cls._load_one(settings, name, version, config)
            except ModelLoadError as exc:
                failures[name] = public_reason(exc)
                log.error("model %s is NOT served: %s", name, exc)
                failed.add(name, version, failure_reason(exc), exc)
        for name in failures:
            mark_not_ready(
                name,
                settings.model_versions.get(name)
                or max(list_versions(settings.model_store, name), default=None),
            )
        return cls(pipelines, failures, settings, config, failed)

    @staticmethod
    def _load_one(settings: Settings, name: str, version: int, config: SessionConfig) -> Pipeline:
        pipeline = load_pipeline(settings, name, version, config)
        model = pipeline.model
        mark_ready(name, model.version)
        record_model_provider(name, model.version, model.provider)
        return pipeline

    @property
    def ready(self) -> bool:
        return bool(self.pipelines) and self.failures.keys() <= self.appeared

    def readiness(self) -> dict[str, str]:
        """Each model this worker knows of: "ready", or why it is not served."""
        failures = {
            name: f"{reason} (new in the store while serving: does not hold /readyz at 503)"
            if name in self.appeared
            else reason
            for name, reason in self.failures.items()
        }
        return {**dict.fromkeys(self.pipelines, "ready"), **failures}

    def add_appeared_failure(self, name: str, version: int | None, reason: str) -> None:
        """Report ``name``, new in the store while serving, as not served (``reason``: public words)."""
        self.failures[name] = reason
        self.appeared.add(name)
        mark_not_ready(name, version)

    def forget(self, name: str) -> None:
        """Stop listing ``name``, which appeared while serving, failed, and whose folder is gone."""
        if name in self.appeared and name not in self.pipelines:
            self.failures.pop(name, None)
            self.appeared.discard(name)

    def names(self) -> list[str]:
        """Every model this worker serves or was asked to serve (those that failed too)."""
        return sorted({*self.pipelines, *self.failures})

    def serving_version(self, name: str) -> int | None:
        """The version new requests for ``name`` get; None while the model is not served."""
        pipeline = self.pipelines.get(name)
        return None if pipeline is None else pipeline.model.version

    def served_versions(self, name: str) -> list[int]:
        """The versions of ``name`` a request may still ask for: the default first, then any
        replaced one inside its grace period."""
        serving = self.serving_version(name)
        retiring = [pipeline.model.version for pipeline in reversed(self.retiring.get(name, []))]
        return list(dict.fromkeys(([] if serving is None else [serving]) + retiring))

    def pipeline(self, name: str, version: str | None = None) -> Pipeline:
        """The pipeline serving ``name`` (``version``: that version, while it is served)."""
        pipeline = self.pipelines.get(name)
        if pipeline is not None:
            if version is None or version == str(pipeline.model.version):
                return pipeline
            return self._retiring_version(name, version)
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

    def _retiring_version(self, name: str, version: str) -> Pipeline:
        for pipeline in reversed(self.retiring.get(name, [])):
            if version == str(pipeline.model.version):
                return pipeline
        served = ", ".join(str(v) for v in self.served_versions(name))
        raise NotFound(
            f"version {version} of {name!r} is not served; serving {served}",
            {"model": name, "version": version},
        )

    def swap_in(self, pipeline: Pipeline) -> Pipeline | None:
        """Serve ``pipeline`` to every new request for its model; the replaced one, if any.

        One assignment: a request that already holds the old pipeline finishes on it, and the
        old one keeps answering what it holds until :meth:`release`. The new version must
        differ from the old one (the watcher never reloads the version it serves).
        """
        model = pipeline.model
        old = self.pipelines.get(model.name)
        self.pipelines[model.name] = pipeline
        self.failures.pop(model.name, None)
        self.appeared.discard(model.name)
        mark_ready(model.name, model.version)
        record_model_provider(model.name, model.version, model.provider)
        record_swap(model.name, None if old is None else old.model.version, model.version)
        if old is not None:
            self.retiring.setdefault(model.name, []).append(old)
        return old

    async def release(self, pipeline: Pipeline) -> None:
        """Close a replaced pipeline: what it still holds is answered, then its session is freed."""
        name, version = pipeline.model.name, pipeline.model.version
        retiring = self.retiring.get(name, [])
        if pipeline not in retiring:
            return
        retiring.remove(pipeline)
        if not retiring:
            del self.retiring[name]
        await pipeline.close()
        pipeline.model.release()
        # The same version number may be served again (its folder removed, then published anew).
        still_served = version in self.served_versions(name)
        record_release(name, version, pipeline.model.provider, still_served)
        log.info("%s/%d released: closed and its ONNX Runtime session freed", name, version)

    async def close(self) -> None:
        """At shutdown: every model answers what it still holds (see :meth:`Pipeline.close`)."""
        for pipeline in self.pipelines.values():
            await pipeline.close()
        for retiring in list(self.retiring.values()):
            for pipeline in retiring:
                await pipeline.close()
        self.retiring.clear()


def resolve_version(settings: Settings, name: str) -> int:
    """The version of ``name`` to load at start-up: its pin, else the highest servable one."""
    version = version_to_serve(settings, name)
    if version is not None:
        return version
    try:
        return latest_version(settings.model_store, name)
    except ManifestError as exc:
        raise ModelLoadError(f"{name}: {exc}") from exc


def newest_folder_without_manifest(store: Path, name: str) -> int | None:
    """The number of ``name``'s highest version folder if that folder has no manifest.json, else None.

    The store's listing (``list_versions``) passes over such a folder, so the version below it
    is served as if the newer one did not exist: a publish that lost its manifest, or one
    copied by hand and not finished. The model watcher names it (ModelWatcher.look_for_unpublished).
    """
    folder = Path(store) / name
    if not folder.is_dir():
        return None
    versions = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0]
    if not versions:
        return None
    newest = max(versions)
    return None if (folder / str(newest) / MANIFEST_FILE).is_file() else newest


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


# Each kind of load failure (failure_reason), in words fit for a client: no file paths and no
# ONNX Runtime text (the log has those).
PUBLIC_REASONS = {
    "sha256": "its model.onnx does not match the sha256 in its manifest",
    "manifest": "its manifest is missing or invalid, or it has no servable version",
    "onnxruntime": "ONNX Runtime could not load its model.onnx",
    "graph": "its model.onnx's inputs and outputs do not match its manifest",
    "warmup": "ONNX Runtime could not run it at warm-up",
    "gate": "its quality gate rejected it",
}


def public_reason(exc: ModelLoadError) -> str:
    """Why a model failed to load, for clients: the kind of fault, not the file or library text."""
    return public_words(failure_reason(exc))


def public_words(reason: str) -> str:
    """A ``failure_reason`` label in words fit for a client."""
    return PUBLIC_REASONS.get(reason, "it does not match its manifest or this server's configuration")


class WorkerBoard:
    """Readiness across worker processes: each ready worker leaves a note in a shared folder.

    BentoML routes a probe to any one worker, but "ready" must mean every worker is. The
    folder is the server's own (``service.platform.server_folder``): no other server's start empties it.
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
