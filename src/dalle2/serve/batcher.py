"""The dynamic batcher: one queue and one worker thread per model.

Requests become jobs. Jobs with the same ``key`` (same model, kind, render size and sampler options; see
``dalle2.serve.jobs``) may be merged into one model call; a job with ``key=None`` always runs alone. The
collector (an asyncio task on the event loop) takes the oldest waiting job, waits up to ``max_wait_s`` from
that job's arrival for compatible jobs to arrive (not at all when enough are already waiting), then starts
one call with the oldest compatible jobs whose images add up to at most ``max_batch`` (the first job is
always taken, so a request is never split). The call runs in the model's own worker thread, never on the
event loop; while it runs, new requests queue up and form the next batch.

Backpressure: at most ``queue_size`` jobs wait per model; :meth:`Batcher.submit` raises :class:`QueueFull`
beyond that. A job that is not finished ``timeout_s`` after it was submitted raises :class:`JobTimeout`; if it
was still waiting it is dropped from the queue and never runs (a call already running cannot be stopped: its
images are discarded).

Fault isolation: when a call with several jobs fails (or gives the wrong number of results), each job still
waiting is run again alone, one call each, so a bad request fails by itself and every other request of that
call gets its images. A job that fails alone gets its own exception (the app turns it into a 4xx if the input
was at fault, else a 500 with the request id).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dalle2.errors import InvalidConfigError
from dalle2.serve.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Metrics

RunBatch = Callable[[Sequence[Any]], Sequence[Any]]


class QueueFull(Exception):
    """Too many requests are waiting for this model."""

    def __init__(self, depth: int, retry_after_s: int) -> None:
        super().__init__(depth)
        self.depth, self.retry_after_s = depth, retry_after_s


class JobTimeout(Exception):
    """The job did not finish in time."""


@dataclass(eq=False)
class Job:
    key: Hashable | None
    images: int  # how many images the job makes: what max_batch counts
    payload: Any
    run: RunBatch  # payloads -> one result per payload, in the worker thread
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """See the module docstring. :meth:`start` and :meth:`stop` run inside the event loop."""

    def __init__(
        self,
        name: str,
        *,
        max_batch: int = 16,
        max_wait_s: float = 0.02,
        queue_size: int = 64,
        metrics: Metrics | None = None,
    ) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_s < 0:
            raise InvalidConfigError("max_batch and queue_size must be >= 1 and max_wait_s >= 0")
        self.name, self.max_batch, self.max_wait_s, self.queue_size = name, max_batch, max_wait_s, queue_size
        self.metrics = metrics or Metrics()
        self.queue: deque[Job] = deque()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"dalle2-model-{name}")
        self.calls = 0
        self.call_seconds = 0.0  # running mean of one call, for retry-after
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"batcher-{self.name}")
        self._set_depth()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in self.queue:
            if not job.future.done():
                job.future.set_exception(JobTimeout())
        self.queue.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- submitting ----------------------------------------------------------------------------------
    async def submit(self, key: Hashable | None, images: int, payload: Any, run: RunBatch, timeout_s: float) -> Any:
        """Queue a job and wait for its result (raises QueueFull, JobTimeout, or the call's exception)."""
        if self._changed is None:
            raise RuntimeError("Batcher.start() was not called")
        if len(self.queue) >= self.queue_size:
            raise QueueFull(len(self.queue), self.retry_after_s())
        job = Job(key, images, payload, run)
        self.queue.append(job)
        self._set_depth()
        self._changed.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except (TimeoutError, asyncio.CancelledError) as error:
            if job in self.queue:  # still waiting: it never runs
                self.queue.remove(job)
                self._set_depth()
            if not job.future.done():
                job.future.cancel()
            if isinstance(error, TimeoutError):
                raise JobTimeout() from None
            raise

    def retry_after_s(self) -> int:
        """A guess at when a place in the queue frees up: one call's duration, 1 to 60 s."""
        return int(min(60, max(1, round(self.call_seconds or 1.0))))

    # -- collecting ----------------------------------------------------------------------------------
    async def _collect(self) -> None:
        assert self._changed is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self._changed.clear()
                await self._changed.wait()
            first = self.queue[0]
            if first.key is not None:
                deadline = first.arrived + self.max_wait_s
                while self._compatible_images(first) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    self._changed.clear()
                    try:
                        await asyncio.wait_for(self._changed.wait(), left)
                    except TimeoutError:
                        break
                    if first not in self.queue:  # it timed out meanwhile
                        break
                if first not in self.queue:
                    continue
            batch = self._take(first)
            self._set_depth()
            await self._run(loop, batch)

    def _compatible_images(self, first: Job) -> int:
        return sum(job.images for job in self.queue if job.key == first.key)

    def _take(self, first: Job) -> list[Job]:
        batch, total = [first], first.images
        if first.key is not None:
            for job in list(self.queue)[1:]:
                if job.key == first.key and total + job.images <= self.max_batch:
                    batch.append(job)
                    total += job.images
        for job in batch:
            self.queue.remove(job)
        return batch

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[Job]) -> None:
        labels = (("model", self.name),)
        self.metrics.observe("dalle2_batch_images", labels, sum(j.images for j in batch), BATCH_BUCKETS)
        self.metrics.observe("dalle2_batch_requests", labels, len(batch), BATCH_BUCKETS)
        start = time.monotonic()
        try:
            results = await self._call(loop, batch)
        except Exception as error:
            if len(batch) == 1:
                self._settle(batch[0], error=error)
            else:  # one bad request must not fail the others: run each one alone
                self.metrics.inc("dalle2_batch_isolated_total", labels)
                for job in batch:
                    if job.future.done():  # timed out or cancelled meanwhile
                        continue
                    try:
                        (result,) = await self._call(loop, [job])
                    except Exception as alone:
                        self._settle(job, error=alone)
                    else:
                        self._settle(job, result=result)
        else:
            for job, result in zip(batch, results, strict=True):
                self._settle(job, result=result)
        seconds = time.monotonic() - start
        self.calls += 1
        self.call_seconds += (seconds - self.call_seconds) / min(self.calls, 20)
        self.metrics.observe("dalle2_model_call_seconds", labels, seconds, LATENCY_BUCKETS)

    async def _call(self, loop: asyncio.AbstractEventLoop, batch: list[Job]) -> Sequence[Any]:
        """One model call in the worker thread: one result per job, or the call's exception."""
        results = await loop.run_in_executor(self.executor, batch[0].run, [j.payload for j in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"a batch of {len(batch)} jobs gave {len(results)} results")
        return results

    @staticmethod
    def _settle(job: Job, *, result: Any = None, error: BaseException | None = None) -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    def _set_depth(self) -> None:
        self.metrics.set("dalle2_queue_depth", (("model", self.name),), len(self.queue))
