"""Model names new to the store, served while the server runs, and imports that leave outputs out.

The first tests drive the registry and its watcher in this process, one poll at a time: a new
name is served at the next poll, one that fails is reported without changing readiness, a
removed model stays served, and an ``--outputs`` import loads and returns only what it kept.
The others start one real ``bentoml serve`` of two workers on a temporary store (a one-second
poll) and import into that store while it serves, as a user would: a new model is answered by
both workers and equals ONNX Runtime in process; a new model whose file fails its sha256 is
reported and counted while the rest keeps serving; an ``--outputs`` import serves only the
output it kept. Nothing is timed: each test waits for the event it expects, with a bound.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from service.inference.model_watcher import ModelWatcher
from service.inference.registry import ModelRegistry
from service.inference.runtime import LoadedModel, SessionConfig
from service.platform.errors import NotFound
from service.platform.settings import Settings
from tests.conftest import Server, serve
from tests.test_generic_models import assert_same, in_process, served, two_kinds
from tests.test_model_lifecycle import metric_sum, remove_version, sample, wait_for_metric
from tests.test_store_import import mlp, run_import, zipmap_classifier

pytestmark = pytest.mark.slow

WORKERS = 2
# Fresh connections asked, each routed to a worker by the kernel, to see every worker answer.
ASKS = 12
ROWS = np.random.default_rng(7).normal(size=(5, 4)).astype(np.float32)
SCORES = np.random.default_rng(8).normal(size=(6, 3)).astype(np.float32)


def v2_rows() -> dict:
    """ROWS as a V2 JSON request for the MLP's input."""
    tensor = {"name": "x", "datatype": "FP32", "shape": list(ROWS.shape), "data": ROWS.ravel().tolist()}
    return {"inputs": [tensor]}


def imported(source: Path, store: Path, name: str, *args: str) -> None:
    result = run_import(source, "--name", name, "--store", store, *args)
    assert result.returncode == 0, result.stderr


def import_elsewhere_then_move(source: Path, store: Path, name: str, tmp: Path, tamper: bool = False) -> None:
    """Import ``name`` into a store of its own, change its file if ``tamper``, then move the whole
    model folder into ``store`` in one rename: a poll sees all of it or none of it."""
    staging = tmp / f"staging-{name}"
    imported(source, staging, name)
    if tamper:
        with open(staging / name / "1" / "model.onnx", "ab") as model_file:
            model_file.write(b"\0")
    os.rename(staging / name, store / name)


# --- in one process: the registry and its watcher, poll by poll ------------------------------


def watched(store: Path) -> tuple[ModelRegistry, ModelWatcher]:
    """Every model of ``store`` (no MODELSERVE_MODELS) and a watcher polled by hand."""
    registry = ModelRegistry.load(Settings(model_store=store, workers=1))
    return registry, ModelWatcher(registry, poll_s=0, grace_s=0, on_ready=lambda: None)


def test_a_new_name_is_served_at_the_next_poll(tmp_path):
    store = tmp_path / "store"
    imported(mlp(tmp_path / "mlp.onnx"), store, "first")

    async def scenario() -> None:
        registry, watcher = watched(store)
        imported(mlp(tmp_path / "mlp.onnx"), store, "second")
        with pytest.raises(NotFound):
            registry.pipeline("second")
        await watcher.poll()
        assert registry.served_versions("second") == [1] and registry.ready
        answer = await registry.pipeline("second").answer_tensors({"x": ROWS})
        assert_same(answer, in_process(store, "second", {"x": ROWS}))
        assert sample("modelserve_model_ready", model="second", version="1") == 1
        await registry.close()

    asyncio.run(scenario())


def test_a_new_name_that_fails_is_reported_without_changing_readiness(tmp_path):
    store = tmp_path / "store"
    imported(mlp(tmp_path / "mlp.onnx"), store, "first")
    labels = {"model": "broken", "version": "1", "reason": "sha256"}

    async def scenario() -> None:
        registry, watcher = watched(store)
        before = sample("modelserve_model_load_failures_total", **labels)
        import_elsewhere_then_move(mlp(tmp_path / "mlp.onnx"), store, "broken", tmp_path, tamper=True)
        for _ in range(3):
            await watcher.poll()
        assert sample("modelserve_model_load_failures_total", **labels) == before + 1  # once, not per poll
        assert registry.ready and registry.served_versions("first") == [1]
        assert registry.failures == {"broken": "its model.onnx does not match the sha256 in its manifest"}
        assert "does not hold /readyz at 503" in registry.readiness()["broken"]
        # A good version of it is served, like a failed model's at start-up.
        imported(mlp(tmp_path / "mlp.onnx"), store, "broken")
        await watcher.poll()
        assert registry.served_versions("broken") == [2] and not registry.failures and registry.ready
        await registry.close()

    asyncio.run(scenario())


def test_a_removed_model_stays_served_until_a_restart(tmp_path, caplog):
    store = tmp_path / "store"
    imported(mlp(tmp_path / "mlp.onnx"), store, "first")

    async def scenario() -> None:
        registry, watcher = watched(store)
        imported(mlp(tmp_path / "mlp.onnx"), store, "second")
        await watcher.poll()
        served_before = registry.pipeline("second")
        remove_version(store, "second", 1)
        shutil.rmtree(store / "second")
        for _ in range(3):
            await watcher.poll()
        assert registry.pipeline("second") is served_before and registry.ready
        await registry.close()

    with caplog.at_level(logging.WARNING, logger="service.inference.model_watcher"):
        asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if "folder is gone" in r.getMessage()]
    assert warnings == [
        "second/1's folder is gone and no other version can be served: it stays served from memory"
    ]


def test_a_server_started_on_an_empty_store_turns_ready_with_its_first_model(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    announced = []

    async def scenario() -> None:
        registry = ModelRegistry.load(Settings(model_store=store, workers=1))
        watcher = ModelWatcher(registry, poll_s=0, grace_s=0, on_ready=lambda: announced.append(True))
        assert not registry.ready
        imported(mlp(tmp_path / "mlp.onnx"), store, "first")
        await watcher.poll()
        assert registry.ready and announced == [True]  # the worker's note for /readyz
        await registry.close()

    asyncio.run(scenario())


def test_a_pinned_model_not_served_is_tried_at_its_pin_once_it_is_published(tmp_path):
    store = tmp_path / "store"
    imported(mlp(tmp_path / "mlp.onnx"), store, "first")

    async def scenario() -> None:
        registry = ModelRegistry.load(Settings(model_store=store, workers=1, model_versions={"first": 2}))
        watcher = ModelWatcher(registry, poll_s=0, grace_s=0, on_ready=lambda: None)
        await watcher.poll()
        assert not registry.ready and registry.serving_version("first") is None  # 1 is not the pin
        imported(mlp(tmp_path / "mlp.onnx"), store, "first")
        imported(mlp(tmp_path / "mlp.onnx"), store, "first")  # 3: newer, but not the pin
        await watcher.poll()
        assert registry.ready and registry.served_versions("first") == [2]
        await registry.close()

    asyncio.run(scenario())


def test_models_that_are_set_are_the_only_ones_served(tmp_path):
    """With MODELSERVE_MODELS, a name outside it is never loaded, however long it sits there."""
    store = tmp_path / "store"
    imported(mlp(tmp_path / "mlp.onnx"), store, "first")

    async def scenario() -> None:
        registry = ModelRegistry.load(Settings(model_store=store, models=["first"], workers=1))
        watcher = ModelWatcher(registry, poll_s=0, grace_s=0, on_ready=lambda: None)
        imported(mlp(tmp_path / "mlp.onnx"), store, "other")
        for _ in range(2):
            await watcher.poll()
        assert registry.names() == ["first"]
        await registry.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("graph", "kept", "feeds"),
    [(zipmap_classifier, "label", {"scores": SCORES}), (two_kinds, "doubled", None)],
    ids=["sequence-of-maps-left-out", "first-output-left-out"],
)
def test_an_outputs_import_loads_and_runs_only_the_output_it_kept(tmp_path, graph, kept, feeds):
    store = tmp_path / "store"
    imported(graph(tmp_path / "graph.onnx"), store, "kept", "--outputs", kept)
    feeds = feeds or {"features": ROWS[:, :3], "counts": np.arange(5, dtype=np.int64)}
    config = SessionConfig.from_settings(Settings(model_store=store, provider="cpu", workers=1))
    model = LoadedModel.load(store, "kept", None, config)
    assert model.output_names == [kept]
    assert_same(model.run(feeds), in_process(store, "kept", feeds))


# --- a real server of two workers, imported into while it serves ----------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("new-models")
    store = folder / "store"
    imported(mlp(folder / "mlp.onnx"), store, "first")
    return store


@pytest.fixture(scope="module")
def server(tmp_path_factory, store) -> Iterator[Server]:
    with serve(
        tmp_path_factory.mktemp("new-models-server"), store=store, workers=str(WORKERS), model_poll_s="1"
    ) as running:
        yield running


def ready_answers(server: Server, name: str) -> list[int]:
    """/v2/models/NAME/ready asked over fresh connections (each may reach another worker)."""
    answers = []
    for _ in range(ASKS):
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answers.append(http.get(f"/v2/models/{name}/ready").status_code)
    return answers


def wait_until_every_worker_is_ready(server: Server, name: str) -> str:
    """Until each worker has swapped ``name`` in (a swap counted per worker) and every one of
    several fresh connections finds it ready; the last /metrics."""
    with server.client() as http:
        text = wait_for_metric(http, "modelserve_model_swaps_total", WORKERS, model=name, from_version="")
    deadline = time.monotonic() + 30
    while (answers := ready_answers(server, name)) != [200] * ASKS and time.monotonic() < deadline:
        time.sleep(0.25)
    assert answers == [200] * ASKS, answers
    return text


def test_a_new_name_imported_while_serving_is_served_by_every_worker(server, store, tmp_path):
    with server.client() as http:
        assert http.get("/v2/models/second/ready").status_code == 404
    imported(mlp(tmp_path / "mlp.onnx"), store, "second")
    text = wait_until_every_worker_is_ready(server, "second")
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        metadata = client.get_model_metadata("second")
        answers = [served(client, "second", {"x": ROWS}, binary) for binary in (False, True)]
    finally:
        client.close()
    with server.client() as http:
        ready = http.get("/readyz")
        metrics = http.get("/metrics").text
    assert metadata["versions"] == ["1"] and [t["name"] for t in metadata["outputs"]] == ["y"]
    for answer in answers:
        assert_same(answer, in_process(store, "second", {"x": ROWS}))
    assert ready.status_code == 200
    assert metric_sum(text, "modelserve_model_ready", model="second", version="1") == 1
    assert metric_sum(metrics, "modelserve_requests_total", model="second", version="1") >= 2
    assert server.log_text().count("model second is new in the model store") == WORKERS


def test_a_new_name_that_fails_sha256_is_reported_and_the_rest_keeps_serving(server, store, tmp_path):
    import_elsewhere_then_move(mlp(tmp_path / "mlp.onnx"), store, "tampered", tmp_path, tamper=True)
    with server.client() as http:
        text = wait_for_metric(
            http, "modelserve_model_load_failures_total", WORKERS, model="tampered", reason="sha256"
        )
        readyz = http.get("/readyz")
        first = http.post("/v2/models/first/infer", json=v2_rows())
    answers = [
        httpx.get(f"{server.url}/v2/models/tampered/ready", timeout=30) for _ in range(ASKS)
    ]  # fresh connections: every worker reports it
    assert {a.status_code for a in answers} == {503}
    assert {a.json()["error"] for a in answers} == {
        "its model.onnx does not match the sha256 in its manifest"
    }
    assert readyz.status_code == 200
    assert first.status_code == 200, first.text
    assert metric_sum(text, "modelserve_model_load_failures_total", model="tampered") == WORKERS
    assert metric_sum(text, "modelserve_model_ready", model="tampered") == 0
    assert server.log_text().count("model tampered is new in the model store and is NOT served") == WORKERS


def test_an_outputs_import_while_serving_serves_only_the_output_it_kept(server, store, tmp_path):
    imported(zipmap_classifier(tmp_path / "zipmap.onnx"), store, "labels", "--outputs", "label")
    wait_until_every_worker_is_ready(server, "labels")
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        metadata = client.get_model_metadata("labels")
        answers = [served(client, "labels", {"scores": SCORES}, binary) for binary in (False, True)]
    finally:
        client.close()
    assert [t["name"] for t in metadata["outputs"]] == ["label"]
    assert metadata["parameters"]["hidden_outputs"] == ["output_probability"]
    for answer in answers:
        assert_same(answer, in_process(store, "labels", {"scores": SCORES}))
        np.testing.assert_array_equal(answer["label"], SCORES.argmax(axis=1))
