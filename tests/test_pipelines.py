"""The pipelines behind the routes, in process with the committed models and the real app."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from service.api.routes import TASK_ROUTES, create_app
from service.inference.pipelines import PIPELINES, Pipeline
from service.inference.registry import ModelRegistry
from service.inference.schemas import ForecastRequest
from service.platform.errors import InvalidInput
from service.platform.settings import BatchPolicy, Settings
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


# --- the forecaster's history lengths --------------------------------------------------------


def full_record() -> list[float]:
    """The 2,180 weeks of the CO2 record before the forecaster's test weeks (1958-03 to 1999-12)."""
    from training.train_forecaster import load_series  # statsmodels: only where it is needed

    return load_series()[1][:2180].tolist()


@pytest.fixture(scope="module")
def forecaster():
    """The committed forecaster's pipeline (default settings), closed after the module."""
    settings = Settings(model_store=COMMITTED_STORE, models=["forecaster"], workers=1)
    registry = ModelRegistry.load(settings)
    yield registry.pipeline("forecaster")
    asyncio.run(registry.close())


def test_a_history_longer_than_the_window_is_answered_from_its_last_window_weeks(forecaster):
    serving = forecaster.model.manifest.serving
    window = int(serving.get("window", serving["max_length"]))
    record = full_record()
    assert forecaster.window == window < len(record) <= forecaster.settings.max_series_points_per_request

    [row] = forecaster.decode(ForecastRequest(series=[record]))
    np.testing.assert_array_equal(row, np.float32(record[-window:]))

    # the V2 tensors go through the same checks: a padded row of 2,180 values and a short one
    short = int(serving["min_length"])  # never longer than the window: read as it is
    history = np.zeros((2, len(record) + 5), dtype=np.float32)
    history[0, : len(record)] = record
    history[1, :short] = record[:short]
    rows = forecaster.items_from_tensors({"history": history, "lengths": np.array([len(record), short])})
    np.testing.assert_array_equal(rows[0], np.float32(record[-window:]))
    np.testing.assert_array_equal(rows[1], np.float32(record[:short]))

    async def answers() -> tuple[dict, dict]:
        full = await forecaster.answer(ForecastRequest(series=[record]))
        last = await forecaster.answer(ForecastRequest(series=[record[-window:]]))
        return full, last

    full, last = asyncio.run(answers())
    assert full["forecasts"].shape == (1, forecaster.horizon)
    np.testing.assert_array_equal(full["forecasts"], last["forecasts"])


def test_a_history_shorter_than_min_length_is_a_400_naming_the_accepted_lengths(forecaster):
    short = full_record()[: forecaster.min_length - 1]
    with pytest.raises(InvalidInput) as refused:
        forecaster.decode(ForecastRequest(series=[short]))
    assert refused.value.status == 400
    assert f"has {len(short)} values; the forecaster takes {forecaster.min_length} to" in refused.value.error
    assert refused.value.detail["min_length"] == forecaster.min_length
    assert refused.value.detail["window"] == forecaster.window
    with pytest.raises(InvalidInput):
        forecaster.items_from_tensors(
            {"history": np.float32([short]), "lengths": np.array([len(short)], dtype=np.int64)}
        )


def test_an_operator_cap_on_the_row_length_still_refuses_longer_rows():
    settings = Settings(model_store=COMMITTED_STORE, models=["forecaster"], workers=1, max_series_length=1500)
    registry = ModelRegistry.load(settings)
    try:
        pipeline = registry.pipeline("forecaster")
        record = full_record()
        with pytest.raises(InvalidInput, match=f"has {len(record)} values; the forecaster takes .* to 1500"):
            pipeline.decode(ForecastRequest(series=[record]))
        assert len(pipeline.decode(ForecastRequest(series=[record[-1500:]]))[0]) == pipeline.window
    finally:
        asyncio.run(registry.close())


def test_the_full_record_in_one_row_fits_the_default_request_limits():
    settings = Settings()
    assert len(full_record()) <= settings.max_series_points_per_request
    body = '{"series": [[' + ",".join(f"{v:.2f}" for v in full_record()) + "]]}"
    assert len(body.encode()) <= settings.max_body_bytes
