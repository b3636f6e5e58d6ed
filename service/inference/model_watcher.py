"""Live model updates: each worker watches the model store and swaps in new versions while serving.

Every ``MODELSERVE_MODEL_POLL_S`` seconds a background task of the worker's event loop lists
the store and picks, for each model that is not pinned (``MODELSERVE_MODEL_VERSIONS``), the
version it should serve: the highest one of ``MODELSERVE_PRECISION`` whose manifest reads,
whose quality gate did not reject it, and that has not failed before with the same files.
When that differs from the version served (a newer one was published, or the served one's
folder was removed), it is verified (sha256, graph against manifest), loaded and warmed up on
a helper thread, so the event loop keeps answering, and then swapped in by one assignment
(:meth:`ModelRegistry.swap_in`). Requests that already hold the old version finish on it;
after ``MODELSERVE_MODEL_RELEASE_GRACE_S`` it is closed and its ONNX Runtime session freed.

A version that fails any step is logged, counted in ``modelserve_model_load_failures_total``,
remembered by its files' fingerprint (so it is not tried at every poll) and never replaces
the version served. A newest version folder without a manifest.json, which the store's listing
passes over, is named in a warning and counted there too (reason ``manifest``) once it has
been so for a poll interval, so that a version being copied in by hand is not flagged half
way. Each worker swaps on its own: for up to one poll interval (plus a load) two workers may
serve different versions. The flow, measured: docs/model-lifecycle.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from service.inference.metrics import record_load_failure
from service.inference.pipelines import Pipeline
from service.inference.registry import (
    ModelRegistry,
    failure_reason,
    load_pipeline,
    newest_folder_without_manifest,
    version_fingerprint,
)
from service.inference.runtime import ModelLoadError
from store_format import ManifestError, list_versions, read_manifest

log = logging.getLogger(__name__)


class ModelWatcher:
    """The background task of one worker that keeps each model at the version it should serve."""

    def __init__(
        self, registry: ModelRegistry, poll_s: float, grace_s: float, on_ready: Callable[[], None]
    ) -> None:
        """``on_ready`` is called after a swap that leaves every model of the worker served."""
        if registry.settings is None or registry.config is None:
            raise ValueError("a ModelWatcher needs a registry made by ModelRegistry.load (settings, config)")
        self.registry = registry
        self.settings = registry.settings
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.on_ready = on_ready
        self._task: asyncio.Task | None = None
        self._releases: set[asyncio.Task] = set()
        # Models whose served version's folder is gone with nothing to fall back to: warned once.
        self._stranded: set[str] = set()
        # Models whose newest version folder has no manifest.json: that version, and whether it
        # was warned about (at the first look after the one that found it).
        self._unpublished: dict[str, tuple[int, bool]] = {}

    def start(self) -> ModelWatcher:
        """Start polling on the running event loop (nothing happens with a poll interval of 0)."""
        # The first look at the store: a newest folder without a manifest.json found now is warned
        # about at the first poll, a poll interval later (at once when there are no polls).
        self.look_for_unpublished()
        if self.poll_s == 0:
            self.look_for_unpublished()
        if self.poll_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="model-watcher")
            log.info(
                "watching %s for new model versions every %g s (release grace %g s)",
                self.settings.model_store,
                self.poll_s,
                self.grace_s,
            )
        return self

    async def stop(self) -> None:
        """At shutdown: no more polls; replaced versions are closed by the registry's close()."""
        for task in [self._task, *self._releases]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = None
        self._releases.clear()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.poll()
            except Exception:  # a bug here must not stop the polls, nor the worker
                log.exception("model store poll failed; the next one is in %g s", self.poll_s)

    async def poll(self) -> None:
        """One look at the store: swap each unpinned model to the version it should serve."""
        self.look_for_unpublished()
        for name in self.registry.names():
            if name not in self.settings.model_versions:
                await self.update(name)

    def look_for_unpublished(self) -> None:
        """Warn once, and count, each unpinned model whose newest version folder has had no
        manifest.json since the look before this one.

        Two looks in a row, a poll interval apart: a folder still being copied into the store
        by hand (the store's own publish renames a whole version into place) is not flagged.
        It is warned about again only if it goes away (its manifest arrives, or the folder is
        removed) and comes back.
        """
        for name in self.registry.names():
            if name in self.settings.model_versions:
                continue
            version = newest_folder_without_manifest(self.settings.model_store, name)
            seen = self._unpublished.get(name)
            if version is None:
                self._unpublished.pop(name, None)
            elif seen is None or seen[0] != version:
                self._unpublished[name] = (version, False)  # found: warned at the next look
            elif not seen[1]:
                self._unpublished[name] = (version, True)
                record_load_failure(name, version, "manifest")
                serving = self.registry.serving_version(name)
                log.warning(
                    "%s has no manifest.json, so %s/%d is NOT served (%s): publish it with its "
                    "manifest.json, or remove the folder",
                    Path(self.settings.model_store) / name / str(version),
                    name,
                    version,
                    "no version is" if serving is None else f"{name}/{serving} is served instead",
                )

    async def update(self, name: str) -> None:
        """Serve the best loadable candidate of ``name``, unless it is the version served now."""
        serving = self.registry.serving_version(name)
        for version, fingerprint in self.candidates(name):
            if version == serving:
                return
            pipeline = await self._load(name, version, fingerprint)
            if pipeline is not None:
                self._swap(name, pipeline)
                return
        gone = serving is not None and serving not in list_versions(self.settings.model_store, name)
        if not gone:
            self._stranded.discard(name)  # its folder is back: warn again if it goes again
        elif name not in self._stranded:
            self._stranded.add(name)
            log.warning(
                "%s/%d's folder is gone and no other version can be served: it stays served from memory",
                name,
                serving,
            )

    def candidates(self, name: str) -> Iterator[tuple[int, str]]:
        """Versions of ``name`` that may be served, highest first, each with its files' fingerprint;
        failures are recorded on the way."""
        store, failed = self.settings.model_store, self.registry.failed_versions
        for version in reversed(list_versions(store, name)):
            fingerprint = version_fingerprint(store, name, version)
            if failed.known(name, version, fingerprint):
                continue
            try:
                manifest = read_manifest(Path(store) / name / str(version))
            except ManifestError as exc:
                failed.add(name, version, "manifest", exc, fingerprint)
                continue
            if manifest.precision != self.settings.precision:
                continue
            if not manifest.servable:
                failed.add(name, version, "gate", "its quality gate verdict is 'rejected'", fingerprint)
                continue
            yield version, fingerprint

    async def _load(self, name: str, version: int, fingerprint: str) -> Pipeline | None:
        """``name``/``version`` verified, loaded and warmed up off the event loop; None if it failed
        (remembered with ``fingerprint``, the files it was read from)."""
        log.info("%s/%d found in the model store: verifying, loading and warming it up", name, version)
        started = time.perf_counter()
        try:
            pipeline = await asyncio.to_thread(
                load_pipeline, self.settings, name, version, self.registry.config
            )
        except ModelLoadError as exc:
            self.registry.failed_versions.add(name, version, failure_reason(exc), exc, fingerprint)
            return None
        log.info("%s/%d loaded and warm in %.2f s", name, version, time.perf_counter() - started)
        return pipeline

    def _swap(self, name: str, pipeline: Pipeline) -> None:
        was_ready = self.registry.ready
        old = self.registry.swap_in(pipeline)
        self._stranded.discard(name)
        if old is None:
            log.info("%s now served (version %d)", name, pipeline.model.version)
        else:
            log.info(
                "%s swapped from version %d to %d; %d is released in %g s",
                name,
                old.model.version,
                pipeline.model.version,
                old.model.version,
                self.grace_s,
            )
            task = asyncio.get_running_loop().create_task(self._release_later(old))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)
        if self.registry.ready and not was_ready:
            self.on_ready()

    async def _release_later(self, old: Pipeline) -> None:
        await asyncio.sleep(self.grace_s)
        await self.registry.release(old)
        del old  # nothing here keeps the closed pipeline alive while the heap is trimmed
        return_freed_memory()

    async def wait_for_releases(self) -> None:
        """Until every replaced version has been released (their grace periods run out)."""
        while self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)


def return_freed_memory() -> None:
    """Give the heap pages freed with a released session back to the system (glibc only).

    Without it, glibc keeps them for later allocations, and the worker's resident memory
    stays at its peak after a swap although nothing uses the memory any more.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
