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

A model name new to the store (a folder with a published version, when ``MODELSERVE_MODELS``
is unset; that setting fixes the models served) is found at the next poll and goes through the
same verify, load, warm-up and swap, at its pinned version if ``MODELSERVE_MODEL_VERSIONS``
names it. If no version of it loads, it is reported as not served (its ready route, the log,
``modelserve_model_load_failures_total``) without taking ``/readyz`` to 503, and is tried again
when its files change, like any failed version. Removing a served model's folder changes
nothing until a restart: the model stays served from memory (warned once). Each worker finds
a new model on its own poll.
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
    public_words,
    version_fingerprint,
)
from service.inference.runtime import ModelLoadError
from store_format import ManifestError, list_models, list_versions, read_manifest

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
        """One look at the store: serve each model new to it, and swap each unpinned model to the
        version it should serve (a pinned one only while its pinned version is not served)."""
        self.look_for_unpublished()
        await self.discover()
        for name in self.registry.names():
            if name not in self.settings.model_versions or self.registry.serving_version(name) is None:
                await self.update(name)

    def new_names(self) -> list[str]:
        """Models in the store this worker neither serves nor reports; none with MODELSERVE_MODELS."""
        if self.settings.models:
            return []
        known = set(self.registry.names())
        return [name for name in list_models(self.settings.model_store) if name not in known]

    async def discover(self) -> None:
        """Serve each model new to the store like a new version; report one that does not load.

        A model that appeared earlier, failed, and whose folder is gone is no longer reported.
        """
        store = self.settings.model_store
        for name in sorted(self.registry.appeared):
            if name not in self.registry.pipelines and not list_versions(store, name):
                self.registry.forget(name)
                log.info("model %s, which was never served, is gone from the model store", name)
        for name in self.new_names():
            log.info("model %s is new in the model store", name)
            await self.update(name)
            if self.registry.serving_version(name) is not None:
                continue
            newest = max(list_versions(store, name), default=None)
            reason = None if newest is None else self.registry.failed_versions.reason(name, newest)
            # No failure of its newest version: no version had the precision asked for (or the pin).
            self.registry.add_appeared_failure(name, newest, public_words(reason or "manifest"))
            log.error(
                "model %s is new in the model store and is NOT served (%s); the models served are "
                "unaffected and /readyz does not change; it is tried again when its files change",
                name,
                reason or "no servable version",
            )

    def look_for_unpublished(self) -> None:
        """Warn once, and count, each unpinned model whose newest version folder has had no
        manifest.json since the look before this one.

        Two looks in a row, a poll interval apart: a folder still being copied into the store
        by hand (the store's own publish renames a whole version into place) is not flagged.
        It is warned about again only if it goes away (its manifest arrives, or the folder is
        removed) and comes back.
        """
        for name in [*self.registry.names(), *self._new_folders()]:
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

    def _new_folders(self) -> list[str]:
        """Folders of the store (not hidden) that are no model this worker knows, unless
        MODELSERVE_MODELS fixes the models served: a new model may be copied in by hand."""
        store = Path(self.settings.model_store)
        if self.settings.models or not store.is_dir():
            return []
        known = set(self.registry.names())
        folders = (p for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))
        return sorted(p.name for p in folders if p.name not in known)

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
        failures are recorded on the way. A pinned model's only candidate is its pin, whatever its
        precision or verdict, as at start-up."""
        store, failed = self.settings.model_store, self.registry.failed_versions
        pin = self.settings.model_versions.get(name)
        for version in reversed(list_versions(store, name)):
            if pin is not None and version != pin:
                continue
            fingerprint = version_fingerprint(store, name, version)
            if failed.known(name, version, fingerprint):
                continue
            try:
                manifest = read_manifest(Path(store) / name / str(version))
            except ManifestError as exc:
                failed.add(name, version, "manifest", exc, fingerprint)
                continue
            if pin is not None:
                yield version, fingerprint
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
