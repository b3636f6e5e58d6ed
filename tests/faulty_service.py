"""The service with two faults injected into the classifier's pipeline, for tests that need a
500 or a 504 from a real server (tests/test_one_handler.py).

An image whose first pixel is 13.25 makes the batch raise (a bug: 500); one whose first pixel
is 14.75 makes it take longer than the request deadline (504). Everything else is served as
usual.
"""

from __future__ import annotations

import asyncio

from service.bento_service import ModelService
from service.inference.pipelines import ClassifierPipeline

FAIL_PIXEL = 13.25
SLOW_PIXEL = 14.75
SLOW_S = 1.5

_run_batch = ClassifierPipeline.run_batch
_infer = ClassifierPipeline.infer


def run_batch_with_a_fault(self, items):
    if any(float(item.reshape(-1)[0]) == FAIL_PIXEL for item in items):
        raise RuntimeError("injected failure")
    return _run_batch(self, items)


async def infer_slowly(self, items):
    # Waits without holding the event loop, as a long queue would.
    if any(float(item.reshape(-1)[0]) == SLOW_PIXEL for item in items):
        await asyncio.sleep(SLOW_S)
    return await _infer(self, items)


ClassifierPipeline.run_batch = run_batch_with_a_fault
ClassifierPipeline.infer = infer_slowly

__all__ = ["ModelService"]
