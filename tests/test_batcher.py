"""The batcher on its own: item counting, splitting, error propagation, bounds, no idle wait."""

from __future__ import annotations

import asyncio
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.inference.batcher import Batcher, BatcherClosed, BatchSizeMismatch, QueueFull, QueueTimeout

# A safety net for tests that would otherwise hang on a bug; not a speed measurement.
GUARD_S = 10


class GatedModel:
    """run_batch that records each batch and, while the gate is closed, blocks (on a thread)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.entered.set()
        assert self.gate.wait(GUARD_S), "test gate never opened"
        return [item * 10 for item in items]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, GUARD_S))


async def wait_for_thread_event(event: threading.Event) -> None:
    await asyncio.get_running_loop().run_in_executor(None, event.wait, GUARD_S)


def test_batches_count_items_not_requests():
    model = GatedModel()

    async def scenario():
        batcher = Batcher(model, max_batch_size=4, executor=ThreadPoolExecutor(1))
        model.gate.clear()
        first = asyncio.ensure_future(batcher.submit([0]))  # finds the model idle: runs alone
        await wait_for_thread_event(model.entered)
        rest = [asyncio.ensure_future(batcher.submit([i, i + 1])) for i in (10, 20, 30)]
        await asyncio.sleep(0)  # let them queue while the first batch is still running
        model.gate.set()
        return await first, await asyncio.gather(*rest)

    first, rest = run(scenario())
    assert first == [0]
    assert rest == [[100, 110], [200, 210], [300, 310]]
    # 6 queued items with room for 4: two whole requests, then the third.
    assert [len(b) for b in model.batches] == [1, 4, 2]


def test_a_request_larger_than_the_batch_is_split_and_reassembled_in_order():
    model = GatedModel()
    results = run(Batcher(model, max_batch_size=4).submit(list(range(10))))
    assert results == [i * 10 for i in range(10)]
    assert [len(b) for b in model.batches] == [4, 4, 2]


def test_one_batch_can_hold_the_tail_of_one_request_and_the_head_of_the_next():
    model = GatedModel()

    async def scenario():
        batcher = Batcher(model, max_batch_size=4, executor=ThreadPoolExecutor(1))
        model.gate.clear()
        first = asyncio.ensure_future(batcher.submit([0]))
        await wait_for_thread_event(model.entered)
        a = asyncio.ensure_future(batcher.submit([1, 2, 3, 4, 5, 6]))
        b = asyncio.ensure_future(batcher.submit([7, 8]))
        await asyncio.sleep(0)
        model.gate.set()
        return await first, await a, await b

    _, a, b = run(scenario())
    assert a == [10, 20, 30, 40, 50, 60] and b == [70, 80]
    assert model.batches[1:] == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_an_exception_reaches_every_caller_of_its_batch_and_no_other():
    calls = []

    def flaky(items: list[int]) -> list[int]:
        calls.append(list(items))
        if -1 in items:
            raise ValueError("poisoned batch")
        return items

    gate = threading.Event()

    def gated_flaky(items: list[int]) -> list[int]:
        if items == [0]:
            gate.wait(GUARD_S)
        return flaky(items)

    async def scenario():
        batcher = Batcher(gated_flaky, max_batch_size=3, executor=ThreadPoolExecutor(1))
        first = asyncio.ensure_future(batcher.submit([0]))
        await asyncio.sleep(0.05)
        same_batch = [asyncio.ensure_future(batcher.submit(x)) for x in ([1], [-1], [2])]
        next_batch = asyncio.ensure_future(batcher.submit([3]))
        await asyncio.sleep(0)
        gate.set()
        outcomes = await asyncio.gather(first, *same_batch, next_batch, return_exceptions=True)
        return outcomes

    first, one, poisoned, two, three = run(scenario())
    assert first == [0]
    for outcome in (one, poisoned, two):
        assert isinstance(outcome, ValueError) and "poisoned" in str(outcome)
    assert three == [3]
    assert calls[1] == [1, -1, 2] and calls[2] == [3]


def test_run_batch_must_return_one_result_per_item():
    with pytest.raises(BatchSizeMismatch, match="1 results for 2 items"):
        run(Batcher(lambda items: items[:1], max_batch_size=8).submit([1, 2]))


def test_a_lone_request_does_not_wait_out_the_wait_budget():
    # With a 1000 s wait budget, a lone request that waited would trip the 10 s guard.
    model = GatedModel()
    assert run(Batcher(model, max_batch_size=64, max_wait_s=1000).submit([7])) == [70]


def test_a_full_queue_refuses_at_once_and_recovers_when_it_drains():
    model = GatedModel()

    async def scenario():
        batcher = Batcher(model, max_batch_size=2, max_queue_size=3, executor=ThreadPoolExecutor(1))
        model.gate.clear()
        running = asyncio.ensure_future(batcher.submit([0]))
        await wait_for_thread_event(model.entered)
        queued = asyncio.ensure_future(batcher.submit([1, 2, 3]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit([4])
        model.gate.set()
        await running, await queued
        return await batcher.submit([5, 6, 7])

    assert run(scenario()) == [50, 60, 70]


def test_batching_off_runs_each_request_on_its_own():
    model = GatedModel()

    async def scenario():
        batcher = Batcher(model, max_batch_size=8, merge_requests=False, executor=ThreadPoolExecutor(1))
        model.gate.clear()
        first = asyncio.ensure_future(batcher.submit([0]))
        await wait_for_thread_event(model.entered)
        rest = [asyncio.ensure_future(batcher.submit([i])) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        model.gate.set()
        await first
        return await asyncio.gather(*rest)

    assert run(scenario()) == [[10], [20], [30]]
    assert model.batches == [[0], [1], [2], [3]]


def test_a_request_that_waited_past_the_queue_timeout_is_failed_not_run():
    model = GatedModel()

    async def scenario():
        batcher = Batcher(model, max_batch_size=8, queue_timeout_s=0.01, executor=ThreadPoolExecutor(1))
        model.gate.clear()
        first = asyncio.ensure_future(batcher.submit([0]))
        await wait_for_thread_event(model.entered)
        late = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.1)  # well past the 10 ms queue timeout
        model.gate.set()
        await first
        with pytest.raises(QueueTimeout):
            await late

    run(scenario())
    assert model.batches == [[0]]


def test_a_cancelled_request_is_skipped():
    model = GatedModel()

    async def scenario():
        batcher = Batcher(model, max_batch_size=8, executor=ThreadPoolExecutor(1))
        model.gate.clear()
        first = asyncio.ensure_future(batcher.submit([0]))
        await wait_for_thread_event(model.entered)
        gone = asyncio.ensure_future(batcher.submit([1]))
        kept = asyncio.ensure_future(batcher.submit([2]))
        await asyncio.sleep(0)
        gone.cancel()
        model.gate.set()
        await first
        return await kept

    assert run(scenario()) == [20]
    assert model.batches == [[0], [2]]


def test_wait_budget_fills_a_batch_under_load():
    model = GatedModel()

    async def scenario():
        batcher = Batcher(model, max_batch_size=4, max_wait_s=5, executor=ThreadPoolExecutor(1))
        model.gate.clear()
        first = asyncio.ensure_future(batcher.submit([0]))
        await wait_for_thread_event(model.entered)
        early = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0)
        model.gate.set()
        await first
        # The model is free again, but the queue holds 1 of 4: the batch waits for more.
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(batcher.submit([2, 3, 4]))
        return await early, await late

    assert run(scenario()) == ([10], [20, 30, 40])
    assert model.batches == [[0], [1, 2, 3, 4]]


def test_batches_overlap_up_to_the_concurrency_limit():
    model = GatedModel()

    async def scenario():
        batcher = Batcher(model, max_batch_size=8, max_concurrent_batches=2, executor=ThreadPoolExecutor(2))
        model.gate.clear()
        first = asyncio.ensure_future(batcher.submit([0]))
        await wait_for_thread_event(model.entered)
        model.entered.clear()
        # The first batch is still blocked, yet a second one starts on the other slot.
        second = asyncio.ensure_future(batcher.submit([1]))
        await wait_for_thread_event(model.entered)
        third = asyncio.ensure_future(batcher.submit([2, 3]))  # both slots busy: it queues
        await asyncio.sleep(0.05)
        assert len(model.batches) == 2
        model.gate.set()
        return await first, await second, await third

    assert run(scenario()) == ([0], [10], [20, 30])
    assert model.batches == [[0], [1], [2, 3]]


def test_closing_lets_the_running_batch_finish_and_answers_everything_queued():
    model = GatedModel()

    async def scenario():
        batcher = Batcher(model, max_batch_size=2, executor=ThreadPoolExecutor(1))
        model.gate.clear()
        running = asyncio.ensure_future(batcher.submit([0]))
        await wait_for_thread_event(model.entered)
        queued = [asyncio.ensure_future(batcher.submit([i])) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.05)
        assert not closing.done(), "close() returned while a batch was still running"
        model.gate.set()
        await closing
        with pytest.raises(BatcherClosed):
            await batcher.submit([4])  # nothing new is taken after close
        return await asyncio.gather(running, *queued, return_exceptions=True)

    first, *queued = run(scenario())
    assert first == [0]
    assert all(isinstance(outcome, BatcherClosed) for outcome in queued), queued
    assert model.batches == [[0]]


class SlowModel:
    """run_batch that takes ``per_item_s`` of wall time per item (a sleep on its thread)."""

    def __init__(self, per_item_s: float) -> None:
        self.per_item_s = per_item_s

    def __call__(self, items: list[int]) -> list[int]:
        threading.Event().wait(self.per_item_s * len(items))
        return items


def test_a_request_that_would_not_run_within_the_queue_timeout_is_refused_before_it_queues():
    # 4 ms or more an item, batches of 4: the queue drains at most 250 items a second, so with a
    # 0.5 s queue timeout at most 125 items fit; the bound on memory (1,000) is far away.
    model = SlowModel(0.004)

    async def scenario():
        batcher = Batcher(
            model, max_batch_size=4, max_queue_size=1000, queue_timeout_s=0.5, executor=ThreadPoolExecutor(1)
        )
        await batcher.submit(list(range(8)))  # the drain rate is measured on real batches
        assert batcher.refusal() is None  # nothing queued: room
        queued = [asyncio.ensure_future(batcher.submit([i])) for i in range(40)]
        await asyncio.sleep(0)
        wait = batcher.expected_wait_s()
        at_40 = batcher.refusal()
        big = batcher.refusal(items=200)  # 240 items take 0.96 s or more
        with pytest.raises(QueueFull) as refused:
            await batcher.submit(list(range(200)))
        big_wait = batcher.expected_wait_s(200)
        await asyncio.gather(*queued)
        return wait, at_40, big, big_wait, refused.value

    wait, at_40, big, big_wait, refused = run(scenario())
    assert wait >= 0.16, wait  # 40 items at 4 ms or more each
    assert at_40 is None
    assert isinstance(big, QueueFull) and big.retry_after_s == math.ceil(big_wait)  # whole seconds
    assert refused.retry_after_s >= 1


def test_retry_after_is_the_time_the_queue_takes_to_drain():
    model = SlowModel(0.01)  # 100 items a second

    async def scenario():
        batcher = Batcher(
            model,
            max_batch_size=10,
            max_queue_size=10_000,
            queue_timeout_s=1.0,
            executor=ThreadPoolExecutor(1),
        )
        await batcher.submit(list(range(20)))
        return batcher.refusal(items=250)  # 2.5 s of work

    refusal = run(scenario())
    assert isinstance(refusal, QueueFull)
    assert refusal.retry_after_s == 3, refusal.retry_after_s
