"""The BentoML service class in process: its shutdown hook, and the BentoML internals it uses."""

from __future__ import annotations

import asyncio

import bentoml
import pytest

from service.inference.schemas import ForecastRequest
from service.platform.errors import Unavailable
from tests.test_service import co2_like


def test_bentoml_still_has_the_private_server_context_the_service_reads():
    # service/bento_service.py reads each worker's index from BentoML's private server
    # context: readiness across workers (WorkerBoard) depends on it. If an upgrade moves it,
    # this says so by name instead of leaving /readyz at 503 for no visible reason.
    try:
        from bentoml._internal.context import server_context
    except ImportError as exc:
        pytest.fail(f"bentoml {bentoml.__version__} moved bentoml._internal.context.server_context: {exc}")
    assert hasattr(server_context, "worker_index"), f"bentoml {bentoml.__version__}: no worker_index"


def test_the_shutdown_hook_answers_requests_still_queued_with_503():
    from service.bento_service import ModelService

    service_class = ModelService.inner
    hooks = [
        name
        for name in dir(service_class)
        if getattr(getattr(service_class, name), "__bentoml_shutdown_hook__", False)
    ]
    assert hooks == ["close"], hooks
    service = service_class()
    forecaster = service.registry.pipeline("forecaster")
    longest = ForecastRequest(series=[co2_like(1040, phase) for phase in range(64)])  # one full batch
    short = ForecastRequest(series=[co2_like(200)])

    async def scenario() -> list:
        requests = [asyncio.ensure_future(forecaster.answer(body)) for body in (longest, short, short)]
        while forecaster.batcher.queued_items != 2:  # the long batch runs; the two short rows wait
            await asyncio.sleep(0.001)
        await service.close()  # what BentoML calls at shutdown
        return await asyncio.gather(*requests, return_exceptions=True)

    served, *queued = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert len(served["forecasts"]) == 64
    for outcome in queued:
        assert isinstance(outcome, Unavailable) and outcome.status == 503, outcome
        assert "shutting down" in outcome.error
