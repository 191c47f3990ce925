"""Dynamic batching: requests that arrive within `max_delay` seconds of the first one waiting are scored as one
batch of up to `max_batch` images, by one worker thread that owns the engine (neither Keras nor an OpenVINO
compiled model is shared between threads here, and one caller at a time keeps the engine's own threads busy)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Batcher:
    def __init__(self, score: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int, max_delay: float):
        """`score(items)` runs in the worker thread and returns one result per item, in order."""
        self.score, self.max_batch, self.max_delay = score, max_batch, max_delay
        self.queue: asyncio.Queue = asyncio.Queue()
        self.engine = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def submit(self, item: Any) -> Any:
        """The result of `item`, scored in the next batch (its exception re-raised here)."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_delay
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    if loop.time() >= deadline:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self.queue.get(), deadline - loop.time()))
                    except TimeoutError:
                        break
            try:
                results = await loop.run_in_executor(self.engine, self.score, [item for item, _ in batch])
            except Exception as e:  # noqa: BLE001 - each waiting request gets the error, the worker goes on
                results = [e] * len(batch)
            for (_, future), result in zip(batch, results):
                if future.done():  # its request was cancelled (the client went away)
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.engine.shutdown(wait=True)
