"""New model versions swapped in while the server serves: real servers over a temporary model store.

The first tests drive the registry and its watcher in this process, one poll at a time. The
others copy the committed store, start ``bentoml serve`` on it with a one-second poll
(``MODELSERVE_MODEL_POLL_S=1``), then publishes, breaks or removes versions the way an operator
would, and watches what the server does over HTTP: the swap under load, a version that fails
verification, the fallback when the newest version's folder is removed, a pinned version, and
a model that failed at start-up coming up once a good version appears. Nothing is timed: each
test waits for the event it expects (a counter in /metrics), with a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from prometheus_client import REGISTRY

from service.inference.model_watcher import ModelWatcher
from service.inference.registry import ModelRegistry
from service.platform.settings import Settings
from store_format import Gate, QualityCheck, list_versions, publish, read_manifest
from tests.conftest import COMMITTED_STORE, Server, serve
from tests.test_reliability import break_for_onnx_runtime
from tests.test_service import digit_images

pytestmark = pytest.mark.slow

# The shortest grace the settings allow with the default timeouts (the HTTP timeout, 2 s).
FAST = {"model_poll_s": "1", "model_release_grace_s": "2"}
# Longest wait for a swap, a release or a failure to show in /metrics.
EVENT_TIMEOUT_S = 40
# The load of the swap test: 16 clients, each pausing a little between requests, and a cap.
CLIENTS = 16
MAX_REQUESTS = 5000


@pytest.fixture
def store_copy(store_copy: Path) -> Path:
    """The committed store with the classifier at its first version only: these scenarios number
    the versions they publish, swap and remove from there (1, then 2, ...)."""
    for version in list_versions(store_copy, "classifier")[1:]:
        shutil.rmtree(store_copy / "classifier" / str(version))
    return store_copy


# --- publishing versions as an operator would ----------------------------------------------------


def publish_copy(
    store: Path, name: str, from_version: int = 1, source_store: Path | None = None, **changes
) -> int:
    """Publish a copy of ``name``/``from_version`` (of ``source_store``, by default ``store``) as
    the next version in ``store`` (the store's own atomic publish), with manifest fields changed
    by ``changes``; the new version number."""
    source = (source_store or store) / name / str(from_version)
    manifest = read_manifest(source)
    fields = {f.name: getattr(manifest, f.name) for f in dataclasses.fields(manifest)}
    del fields["version"], fields["sha256"]
    return publish(store, {**fields, **changes}, source / "model.onnx").version


def publish_with_wrong_sha256(store: Path, name: str, from_version: int = 1) -> int:
    """The next version of ``name``, whose manifest records a sha256 its model.onnx does not have.

    Assembled in a hidden folder and renamed into place, as the store's publish does.
    """
    source = store / name / str(from_version)
    version = max(int(p.name) for p in (store / name).iterdir() if p.name.isdigit()) + 1
    staging = store / name / f".staging-{version}"
    shutil.copytree(source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest.update(version=version, sha256="0" * 64)
    (staging / "manifest.json").write_text(json.dumps(manifest))
    os.rename(staging, store / name / str(version))
    return version


def remove_version(store: Path, name: str, version: int) -> None:
    """Take a version out of the store in one step (a rename), then delete its files."""
    folder = store / name / str(version)
    hidden = folder.with_name(f".removed-{version}")
    os.rename(folder, hidden)
    shutil.rmtree(hidden)


def rejected_gate(store: Path, name: str) -> Gate:
    """A quality verdict of "rejected": a bar the version's own held-out metrics cannot meet."""
    metrics = read_manifest(store / name / "1").metrics
    gate = Gate.evaluate((QualityCheck("test_accuracy", ">=", 2.0, "unreachable"),), metrics)
    assert gate.verdict == "rejected"
    return gate


# --- reading what the server says ---------------------------------------------------------------------


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of every series of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for_metric(http: httpx.Client, name: str, at_least: float, **labels: str) -> str:
    """Poll /metrics until ``name`` (summed over ``labels``' series) reaches ``at_least``; the text."""
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while time.monotonic() < deadline:
        text = http.get("/metrics").text
        if metric_sum(text, name, **labels) >= at_least:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{name}{labels} never reached {at_least}; last /metrics:\n{text}")


def served_versions(http: httpx.Client, name: str = "classifier", asks: int = 6) -> set[tuple[str, ...]]:
    """The V2 metadata's versions, asked several times (each answer comes from one worker)."""
    return {tuple(http.get(f"/v2/models/{name}").json()["versions"]) for _ in range(asks)}


def server_rss_mb(server: Server) -> float:
    """Resident memory of the server's whole process tree (every worker), in MiB."""
    root = psutil.Process(server.process.pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total / 2**20


# --- load while swapping ------------------------------------------------------------------------------


class Load:
    """``CLIENTS`` clients on /classify and one on /readyz, on a thread, until stopped or capped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self.ready_statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + len(self.failures)

    async def _run(self) -> None:
        images, _ = digit_images(1)
        limits = httpx.Limits(max_connections=CLIENTS + 1)
        async with httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits) as client:
            clients = [self._classify(client, images) for _ in range(CLIENTS)]
            await asyncio.gather(*clients, self._probe(client))

    def _running(self) -> bool:
        return not self._stop.is_set() and self.sent < MAX_REQUESTS

    async def _classify(self, client: httpx.AsyncClient, images: list) -> None:
        while self._running():
            try:
                response = await client.post("/classify", json={"images": images})
                self.statuses[response.status_code] += 1
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
            await asyncio.sleep(0.01)

    async def _probe(self, client: httpx.AsyncClient) -> None:
        while self._running():
            self.ready_statuses[(await client.get("/readyz")).status_code] += 1
            await asyncio.sleep(0.1)


# --- in one process: the registry and the watcher, poll by poll ----------------------------------------


def sample(name: str, **labels: str) -> float:
    """A metric's value in this process's registry (0 when the series does not exist yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def in_process(store: Path) -> tuple[ModelRegistry, ModelWatcher]:
    """The classifier's registry over ``store`` and a watcher polled by hand, with no grace period."""
    registry = ModelRegistry.load(Settings(model_store=store, models=["classifier"], workers=1))
    return registry, ModelWatcher(registry, poll_s=0, grace_s=0, on_ready=lambda: None)


def test_a_version_number_served_again_within_a_grace_period_stays_ready(store_copy):
    async def scenario() -> None:
        registry, watcher = in_process(store_copy)
        first = registry.pipeline("classifier")
        second = publish_copy(store_copy, "classifier")
        await watcher.poll()
        assert registry.served_versions("classifier") == [2, 1]
        assert registry.pipeline("classifier", "1") is first  # asked for by number: still served
        remove_version(store_copy, "classifier", second)
        await watcher.poll()  # back to 1, loaded afresh, while the first 1 is still retiring
        assert registry.served_versions("classifier") == [1, 2]
        assert registry.pipeline("classifier") is not first
        await watcher.wait_for_releases()
        assert registry.served_versions("classifier") == [1] and not registry.retiring
        assert first.model.session is None  # released: its ONNX Runtime session is gone
        assert sample("modelserve_model_ready", model="classifier", version="1") == 1
        assert sample("modelserve_model_ready", model="classifier", version="2") == 0
        await registry.close()

    asyncio.run(scenario())


def test_a_failed_version_is_tried_again_only_once_its_files_change(store_copy):
    async def scenario() -> None:
        registry, watcher = in_process(store_copy)
        broken = publish_with_wrong_sha256(store_copy, "classifier")
        labels = {"model": "classifier", "version": str(broken), "reason": "sha256"}
        before = sample("modelserve_model_load_failures_total", **labels)
        for _ in range(3):
            await watcher.poll()
        assert sample("modelserve_model_load_failures_total", **labels) == before + 1
        assert registry.served_versions("classifier") == [1]
        # The right model file's sha256 put in its manifest: a new fingerprint, tried, and served.
        folder = store_copy / "classifier" / str(broken)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["sha256"] = read_manifest(store_copy / "classifier" / "1").sha256
        (folder / "manifest.json").write_text(json.dumps(manifest))
        await watcher.poll()
        assert registry.served_versions("classifier") == [broken, 1]
        await watcher.wait_for_releases()
        await registry.close()

    asyncio.run(scenario())


def test_a_model_whose_only_version_is_removed_stays_served_from_memory(store_copy, caplog):
    async def scenario() -> None:
        registry, watcher = in_process(store_copy)
        served = registry.pipeline("classifier")
        remove_version(store_copy, "classifier", 1)
        for _ in range(3):
            await watcher.poll()
        assert registry.pipeline("classifier") is served and registry.served_versions("classifier") == [1]
        answer = await served.answer_tensors({"images": np.zeros((1, 1, 8, 8), np.float32)})
        assert answer["probabilities"].shape == (1, 10)
        await registry.close()

    with caplog.at_level(logging.WARNING, logger="service.inference.model_watcher"):
        asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if "folder is gone" in r.getMessage()]
    assert warnings == [
        "classifier/1's folder is gone and no other version can be served: it stays served from memory"
    ]


# --- against a real server ----------------------------------------------------------------------------


def test_a_new_version_is_swapped_in_under_load_without_a_failed_request(tmp_path, store_copy):
    workers = 2
    with (
        serve(tmp_path, store=store_copy, models="classifier", workers=str(workers), **FAST) as server,
        server.client() as http,
    ):
        for _ in range(200):  # both workers past their first requests before memory is read
            http.post("/classify", json={"images": digit_images(1)[0]})
        rss_before = server_rss_mb(server)
        with Load(server.url) as load:
            while load.sent < 200:
                time.sleep(0.05)
            publish_copy(store_copy, "classifier")
            wait_for_metric(http, "modelserve_model_swaps_total", workers, model="classifier", to_version="2")
            text = wait_for_metric(
                http, "modelserve_model_releases_total", workers, model="classifier", version="1"
            )
            sent_by_release = load.sent
        rss_after = server_rss_mb(server)
        versions = served_versions(http)
        old_ready = [http.get("/v2/models/classifier/versions/1/ready").status_code for _ in range(4)]
        new_ready = http.get("/v2/models/classifier/versions/2/ready")
        answer = http.post("/classify", json={"images": digit_images(1)[0]})
        text = http.get("/metrics").text
    print(
        f"\nswap under load: {load.sent} requests ({sent_by_release} by the release), "
        f"statuses {dict(load.statuses)}, /readyz {dict(load.ready_statuses)}; "
        f"server RSS {rss_before:.1f} MiB before, {rss_after:.1f} MiB after the release"
    )
    assert not load.failures, load.failures[:5]
    assert load.statuses[200] == load.sent > 200
    assert set(load.ready_statuses) == {200}, load.ready_statuses
    assert versions == {("2",)}
    assert set(old_ready) == {404}
    assert new_ready.status_code == 200 and new_ready.json()["ready"] is True
    assert answer.status_code == 200
    assert metric_sum(text, "modelserve_requests_total", model="classifier", version="2") > 0
    assert metric_sum(text, "modelserve_model_ready", model="classifier", version="2") == 1
    assert metric_sum(text, "modelserve_model_ready", model="classifier", version="1") == 0
    # Generous: the released version's session is gone, so memory does not grow by a model's worth.
    assert rss_after < rss_before * 1.25, (rss_before, rss_after)
    log = server.log_text()
    assert "classifier swapped from version 1 to 2" in log and "classifier/1 released" in log


def test_a_version_that_fails_verification_is_never_served(tmp_path, store_copy):
    with (
        serve(tmp_path, store=store_copy, models="classifier", workers="1", **FAST) as server,
        server.client() as http,
    ):
        bad_sha = publish_with_wrong_sha256(store_copy, "classifier")
        rejected = publish_copy(store_copy, "classifier", gate=rejected_gate(store_copy, "classifier"))
        failures = {"model": "classifier"}
        wait_for_metric(http, "modelserve_model_load_failures_total", 1, version=str(bad_sha), **failures)
        wait_for_metric(http, "modelserve_model_load_failures_total", 1, version=str(rejected), **failures)
        versions = served_versions(http, asks=2)
        answer = http.post("/classify", json={"images": digit_images(1)[0]})
        ready = http.get("/readyz")
        # A good version published after them is served: the polls go on, the failed ones are skipped.
        good = publish_copy(store_copy, "classifier")
        text = wait_for_metric(http, "modelserve_model_swaps_total", 1, to_version=str(good), **failures)
        final_versions = served_versions(http, asks=2)
    assert (bad_sha, rejected, good) == (2, 3, 4)
    assert versions == {("1",)}
    assert answer.status_code == 200 and ready.status_code == 200
    # 4 first; 1 may still be listed after it while it is inside its release grace period.
    assert {versions[0] for versions in final_versions} == {"4"}
    # Each failure was found and counted once, not again at every poll since.
    assert metric_sum(text, "modelserve_model_load_failures_total", version="2", reason="sha256") == 1
    assert metric_sum(text, "modelserve_model_load_failures_total", version="3", reason="gate") == 1
    assert metric_sum(text, "modelserve_model_swaps_total", to_version="2") == 0
    assert metric_sum(text, "modelserve_model_swaps_total", to_version="3") == 0
    log = server.log_text()
    assert "classifier/2 failed (sha256) and is NOT served" in log
    assert "classifier/3 failed (gate) and is NOT served" in log


def test_removing_the_newest_version_falls_back_to_the_previous_one(tmp_path, store_copy):
    second = publish_copy(store_copy, "classifier")
    with (
        serve(tmp_path, store=store_copy, models="classifier", workers="1", **FAST) as server,
        server.client() as http,
    ):
        before = served_versions(http, asks=2)
        remove_version(store_copy, "classifier", second)
        text = wait_for_metric(
            http, "modelserve_model_swaps_total", 1, model="classifier", from_version="2", to_version="1"
        )
        answer = http.post("/v2/models/classifier/infer", json=v2_images())
        text = wait_for_metric(http, "modelserve_model_releases_total", 1, model="classifier", version="2")
        after = served_versions(http, asks=2)
    assert before == {("2",)} and after == {("1",)}
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    assert metric_sum(text, "modelserve_model_ready", model="classifier", version="2") == 0
    assert metric_sum(text, "modelserve_model_provider_info", model="classifier", version="2") == 0


def test_a_pinned_version_is_never_swapped(tmp_path, store_copy):
    with (
        serve(
            tmp_path,
            store=store_copy,
            models="classifier,generator",
            workers="1",
            model_versions='{"classifier": 1}',
            **FAST,
        ) as server,
        server.client() as http,
    ):
        publish_copy(store_copy, "classifier")
        # The unpinned generator's swap shows that the polls have seen the new classifier too.
        publish_copy(store_copy, "generator")
        text = wait_for_metric(http, "modelserve_model_swaps_total", 1, model="generator", to_version="2")
        versions = served_versions(http, asks=2)
    assert versions == {("1",)}
    assert metric_sum(text, "modelserve_model_swaps_total", model="classifier") == 0


def test_a_model_that_failed_at_start_up_comes_up_when_a_good_version_appears(tmp_path, store_copy):
    break_for_onnx_runtime(store_copy / "classifier" / "1")
    with (
        serve(
            tmp_path, store=store_copy, models="classifier", workers="1", wait_ready=False, **FAST
        ) as server,
        server.client() as http,
    ):
        text = wait_for_metric(
            http, "modelserve_model_load_failures_total", 1, model="classifier", reason="onnxruntime"
        )
        not_ready = http.get("/readyz")
        good = publish_copy(store_copy, "classifier", source_store=COMMITTED_STORE)
        wait_for_metric(http, "modelserve_model_swaps_total", 1, model="classifier", to_version=str(good))
        ready = http.get("/readyz")
        answer = http.post("/classify", json={"images": digit_images(1)[0]})
    assert not_ready.status_code == 503
    assert ready.status_code == 200, ready.text
    assert answer.status_code == 200
    assert metric_sum(text, "modelserve_model_load_failures_total", version="1") == 1


# --- helpers of the tests above ------------------------------------------------------------------------


def v2_images() -> dict:
    images, _ = digit_images(1)
    flat = [float(v) for row in images[0] for v in row]
    return {"inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": flat}]}
