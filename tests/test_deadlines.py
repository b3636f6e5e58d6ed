"""Request deadlines kept by one timer per tick (service.platform.deadlines)."""

from __future__ import annotations

import asyncio

import pytest

from service.platform.deadlines import Deadlines


async def answer(deadlines: Deadlines, work_s: float) -> str:
    bucket = deadlines.enter()
    try:
        await asyncio.sleep(work_s)
        return "answered"
    except asyncio.CancelledError:
        if not deadlines.expired():
            raise
        return "past the deadline"
    finally:
        deadlines.leave(bucket)


def test_work_past_the_deadline_is_cancelled_and_told_so_and_the_rest_is_not():
    async def scenario():
        deadlines = Deadlines(0.1, tick_s=0.02)
        late, early = answer(deadlines, 5.0), answer(deadlines, 0.01)
        return await asyncio.wait_for(asyncio.gather(late, early), 5)

    assert asyncio.run(scenario()) == ["past the deadline", "answered"]


def test_a_cancellation_from_elsewhere_is_not_taken_for_the_deadline():
    async def scenario():
        deadlines = Deadlines(10.0)
        task = asyncio.ensure_future(answer(deadlines, 5.0))
        await asyncio.sleep(0.01)
        task.cancel()  # the client left
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_a_task_that_answered_in_time_is_left_alone_when_its_bucket_fires():
    async def scenario():
        deadlines = Deadlines(0.05, tick_s=0.01)
        assert await answer(deadlines, 0.0) == "answered"
        await asyncio.sleep(0.1)  # the bucket's timer fires with nothing in it
        return deadlines._expired

    assert asyncio.run(scenario()) == set()


def test_bad_deadlines_are_refused():
    with pytest.raises(ValueError, match="deadline_s"):
        Deadlines(0)
