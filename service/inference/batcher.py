"""Adaptive batching: concurrent requests for one model become one ONNX Runtime call.

Why our own and not BentoML's ``batchable=True`` (measured, see docs/batching.md): BentoML's
dispatcher counts requests rather than items, answers overload with an empty 503 and does
not recover from it, runs one batch at a time, and cannot see routes outside
``@bentoml.api`` (the V2 protocol routes must share batches with the task routes).

The policy, in full:

* A batch holds at most ``max_batch_size`` *items* (images, rows, samples), never requests:
  a request with more items than that is split over several batches, and one batch can
  hold the tail of one request and the head of the next.
* A request that finds the model idle runs at once: a lone request never waits.
* Up to ``max_concurrent_batches`` batches run at the same time (on an executor with that
  many threads). Batches form while all of them are busy: when one finishes, everything
  queued meanwhile (up to the maximum) goes next. Only then, and only if the batch is not
  full yet, it may wait up to ``max_wait_s`` (counted from its oldest request's arrival)
  for more.
* The queue is bounded twice: a request is refused at once with :class:`QueueFull` if it
  would push the queue past ``max_queue_size`` items (a bound on memory), or if it would not
  run within ``queue_timeout_s`` at the rate the queue has recently drained (a bound on
  time: it would only time out in the queue). So the queue holds as much as the model can
  answer in time, whatever the size of requests, and no more. The route asks the same
  question before a request's body is even parsed (:meth:`Batcher.refusal`), so a refusal
  costs the server little. ``Retry-After`` is the time the queue takes to drain. Only the
  drain rate adapts, and it is measured on every batch, so nothing needs to recover when an
  overload ends.
* A request that waited longer than ``queue_timeout_s`` is failed with
  :class:`QueueTimeout` instead of being run for a client that has likely given up.
* ``run_batch`` must return one result per item (:class:`BatchSizeMismatch` otherwise);
  an exception it raises reaches every request in that batch, and no other.
* :meth:`Batcher.close` (at shutdown) lets running batches finish and answer their
  callers, and fails every request still queued, or submitted later, with
  :class:`BatcherClosed`: no request is left waiting for an answer that never comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class QueueFull(Exception):
    """The model's queue is at its bound; the caller should retry after ``retry_after_s``."""

    def __init__(self, queued: int, limit: int, retry_after_s: int = 1) -> None:
        super().__init__(f"{queued} items are queued (limit {limit})")
        self.retry_after_s = retry_after_s


class QueueTimeout(Exception):
    """The request waited in the queue longer than the queue timeout."""


class BatcherClosed(Exception):
    """The batcher was closed: the server is shutting down."""


class BatchSizeMismatch(RuntimeError):
    """``run_batch`` returned a different number of results than it was given items."""


@dataclass(frozen=True)
class BatchStats:
    """What one executed batch looked like, for metrics."""

    items: int  # items in the batch
    requests: int  # requests (or parts of requests) sharing it
    queue_wait_s: float  # how long its oldest request waited before the batch started
    run_s: float  # wall time of run_batch
    failed: bool  # run_batch raised


class _Pending:
    """One submitted request: its items, the results filled in so far, and its future."""

    __slots__ = ("enqueued_at", "future", "items", "next", "remaining", "results")

    def __init__(self, items: Sequence, future: asyncio.Future, now: float) -> None:
        self.items = items
        self.results: list = [None] * len(items)
        self.remaining = len(items)
        self.next = 0  # index of the first item not yet taken into a batch
        self.future = future
        self.enqueued_at = now


class Batcher(Generic[Item, Result]):
    """Merges concurrent :meth:`submit` calls into calls of ``run_batch``.

    ``run_batch`` takes a list of items and returns a list of results, index-aligned. It
    runs on ``executor`` when one is given (so the event loop keeps accepting requests
    while the model runs, which is what lets batches form), inline otherwise.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Item]], list[Result]],
        *,
        max_batch_size: int,
        max_wait_s: float = 0.0,
        max_queue_size: int = 1024,
        queue_timeout_s: float = 5.0,
        merge_requests: bool = True,
        max_concurrent_batches: int = 1,
        executor: Executor | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue_size < 1 or max_wait_s < 0:
            raise ValueError(
                f"max_batch_size and max_queue_size must be >= 1 and max_wait_s >= 0, got "
                f"{max_batch_size}, {max_queue_size} and {max_wait_s}"
            )
        if max_concurrent_batches != 1 and executor is None:
            raise ValueError(
                "batches can only overlap on an executor; without one, max_concurrent_batches must be 1"
            )
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue_size = max_queue_size
        self.queue_timeout_s = queue_timeout_s
        self.merge_requests = merge_requests
        self.max_concurrent_batches = max_concurrent_batches
        self._executor = executor
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_items = 0
        self._arrived = asyncio.Event()  # set whenever the queue gains items
        self._freed = asyncio.Event()  # set whenever a running batch finishes
        self._running: set[asyncio.Task] = set()
        self._dispatcher: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # Seconds per item at which the queue drains (moving average): while requests queue up,
        # the time from one batch's end to the next's over its items, which counts what the
        # worker does besides running the model (parsing, encoding); the run time alone otherwise.
        self._item_s = 0.0
        self._last_end: float | None = None  # when the last batch ended with items still queued

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def expected_wait_s(self, items: int = 0) -> float:
        """How long the items queued now, and ``items`` more, take to drain at the recent rate."""
        return (self._queued_items + items) * self._item_s

    def refusal(self, items: int = 1) -> QueueFull | None:
        """:class:`QueueFull` if a request of ``items`` arriving now should be refused before
        anything else is done with it: the queue has no room for it, or it would not run within
        ``queue_timeout_s`` (it would only time out in the queue). None if it may come in."""
        wait = self.expected_wait_s(items)
        if self._queued_items + items > self.max_queue_size or wait > self.queue_timeout_s:
            return QueueFull(self._queued_items, self.max_queue_size, _retry_after(wait))
        return None

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """Run ``items`` in one or more batches; their results, in order."""
        if not items:
            return []
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        full = self.refusal(len(items))
        if full is not None:
            raise full
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new event loop (tests, a restarted worker)
            self._loop, self._dispatcher = loop, None
            self._arrived, self._freed, self._running = asyncio.Event(), asyncio.Event(), set()
        pending = _Pending(items, loop.create_future(), loop.time())
        self._queue.append(pending)
        self._queued_items += len(items)
        self._arrived.set()
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = loop.create_task(self._dispatch())
        return await pending.future

    async def close(self) -> None:
        """Stop: running batches finish and answer their callers; everything still queued,
        and everything submitted from now on, fails with :class:`BatcherClosed`."""
        self._closed = True
        if self._loop is not asyncio.get_running_loop():
            return  # never used, or used on an event loop that is gone: nothing can be waiting
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        if self._running:  # they settle their own callers
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(BatcherClosed("the server is shutting down"))
        self._queued_items = 0

    # --- the dispatcher -------------------------------------------------------------------

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue  # a free slot and new items: they run at once
            if len(self._running) >= self.max_concurrent_batches:
                self._freed.clear()
                await self._freed.wait()
                await self._maybe_wait_for_more()  # a batch just finished, under load
                continue
            batch = self._take_batch()
            if batch:
                task = loop.create_task(self._run(batch))
                self._running.add(task)
                task.add_done_callback(self._batch_finished)

    def _batch_finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._freed.set()

    async def _maybe_wait_for_more(self) -> None:
        """After a batch, give a not-yet-full queue until its oldest item's deadline to fill."""
        if not self._queue or self.max_wait_s <= 0 or self._queued_items >= self.max_batch_size:
            return
        loop = asyncio.get_running_loop()
        delay = self._queue[0].enqueued_at + self.max_wait_s - loop.time()
        while delay > 0 and self._queued_items < self.max_batch_size:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), delay)
            delay = self._queue[0].enqueued_at + self.max_wait_s - loop.time() if self._queue else 0

    def _take_batch(self) -> list[tuple[_Pending, int, int]]:
        """Pop up to ``max_batch_size`` items: (request, start, stop) slices, oldest first."""
        now = asyncio.get_running_loop().time()
        parts: list[tuple[_Pending, int, int]] = []
        room = self.max_batch_size
        while self._queue and room and (self.merge_requests or not parts):
            pending = self._queue[0]
            if pending.future.done():  # cancelled by its caller, or failed in an earlier batch
                self._drop_head()
                continue
            if pending.next == 0 and now - pending.enqueued_at > self.queue_timeout_s:
                self._drop_head()
                pending.future.set_exception(
                    QueueTimeout(f"waited {now - pending.enqueued_at:.1f} s in the queue")
                )
                continue
            start = pending.next
            stop = min(len(pending.items), start + room)
            parts.append((pending, start, stop))
            pending.next = stop
            room -= stop - start
            self._queued_items -= stop - start
            if stop == len(pending.items):
                self._queue.popleft()
        return parts

    def _drop_head(self) -> None:
        pending = self._queue.popleft()
        self._queued_items -= len(pending.items) - pending.next

    async def _run(self, parts: list[tuple[_Pending, int, int]]) -> None:
        items = [item for pending, start, stop in parts for item in pending.items[start:stop]]
        loop = asyncio.get_running_loop()
        started = loop.time()
        wall = time.perf_counter()
        error: BaseException | None = None
        try:
            if self._executor is None:
                results = self._run_batch(items)
            else:
                results = await loop.run_in_executor(self._executor, self._run_batch, items)
            if len(results) != len(items):
                raise BatchSizeMismatch(f"run_batch returned {len(results)} results for {len(items)} items")
        except Exception as exc:  # every caller of this batch hears of it
            error = exc
        run_s = time.perf_counter() - wall
        self._settle(parts, results if error is None else None, error)
        self._time_the_drain(len(items), run_s, loop.time(), error is None)
        if self._on_batch is not None:
            oldest = min(p.enqueued_at for p, _, _ in parts)
            self._on_batch(BatchStats(len(items), len(parts), started - oldest, run_s, error is not None))

    def _time_the_drain(self, items: int, run_s: float, now: float, ran: bool) -> None:
        if ran:
            busy = self._last_end is not None and len(self._running) <= 1
            per_item = (now - self._last_end) / items if busy else run_s / items  # type: ignore[operator]
            self._item_s = per_item if not self._item_s else 0.8 * self._item_s + 0.2 * per_item
        self._last_end = now if self._queue else None

    @staticmethod
    def _settle(parts, results, error) -> None:
        offset = 0
        for pending, start, stop in parts:
            if pending.future.done():
                offset += stop - start
                continue
            if error is not None:
                pending.future.set_exception(error)
                continue
            pending.results[start:stop] = results[offset : offset + stop - start]
            offset += stop - start
            pending.remaining -= stop - start
            if pending.remaining == 0:
                pending.future.set_result(pending.results)


def _retry_after(wait_s: float) -> int:
    """``Retry-After`` for a queue that drains in ``wait_s``: whole seconds, at least one."""
    return max(1, math.ceil(wait_s))
