"""The pipelines behind the routes, in process with the committed models and the real app."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from service.pipelines import PIPELINES, Pipeline
from service.registry import ModelRegistry
from service.routes import TASK_ROUTES, create_app
from service.settings import BatchPolicy, Settings
from tests.conftest import COMMITTED_STORE
from tests.test_service import co2_like, metric_values


def test_a_pipeline_must_provide_the_whole_contract():
    class RunsOnly(Pipeline):
        def run_batch(self, items: list) -> list:
            return items

    with pytest.raises(TypeError, match="abstract") as refused:
        RunsOnly(None, None)  # type: ignore[arg-type]
    for method in ("decode", "encode", "items_from_tensors", "tensors_from_results", "example_items"):
        assert method in str(refused.value)


def test_every_task_route_names_a_model_whose_task_has_a_pipeline():
    settings = Settings(model_store=COMMITTED_STORE)
    registry = ModelRegistry.load(settings)
    try:
        for route in TASK_ROUTES:
            pipeline = registry.pipeline(route.model)
            assert type(pipeline) is PIPELINES[pipeline.model.manifest.task], route.path
    finally:
        asyncio.run(registry.close())


def test_a_queue_timeout_is_a_503_counted_once_in_the_error_metrics():
    # A batch holds at most 64 rows, and a queued request may wait 20 ms: a one-row request
    # sent right behind 64 of the longest rows waits for their whole batch (a tenth of a
    # second or more), and times out.
    policy = BatchPolicy(max_batch_size=64, queue_timeout_s=0.02)
    settings = Settings(model_store=COMMITTED_STORE, models=["forecaster"], workers=1, batch=policy)
    registry = ModelRegistry.load(settings)
    app = create_app(settings)
    app.state.registry = registry
    long_rows = {"series": [co2_like(1040, phase) for phase in range(64)]}
    one_row = {"series": [co2_like(200)]}

    async def scenario() -> tuple[list[httpx.Response], str, str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            before = (await http.get("/metrics")).text
            responses = await asyncio.gather(
                http.post("/forecast", json=long_rows), http.post("/forecast", json=one_row)
            )
            after = (await http.get("/metrics")).text
        await registry.close()
        return list(responses), before, after

    (served, timed_out), before, after = asyncio.run(scenario())
    assert served.status_code == 200 and np.array(served.json()["forecasts"]).shape[0] == 64
    assert timed_out.status_code == 503 and "in the queue" in timed_out.json()["error"], timed_out.text
    assert timed_out.headers["Retry-After"] == "1"

    def errors_503(text: str) -> float:
        values = metric_values(text, 'modelserve_errors_total{model="forecaster",status="503",', "forecaster")
        return values.get("", 0.0)

    assert errors_503(after) - errors_503(before) == 1
