"""Micro-batching: concurrent requests for analysis share one forward pass.

A GPU is fast per batch, not per image. Worker threads each submit their case's images; a
single runner thread waits up to ``max_wait_ms`` for more work (or until ``max_batch``
images are waiting) and calls the batch function once. Each caller gets its own results
back, or the exception the batch raised.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import Future
from typing import Callable, Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    def __init__(self, fn: Callable[[list[In]], list[Out]], max_batch: int = 16,
                 max_wait_ms: float = 25.0):
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self._items: list[tuple[In, Future]] = []
        self._cond = threading.Condition()
        self._closed = False
        # How many batches of each size ran: bounded by max_batch entries however long the
        # worker lives (a list of every batch would grow for ever).
        self.batch_sizes: Counter[int] = Counter()
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def submit_many(self, items: list[In]) -> list[Future]:
        futures = [Future() for _ in items]
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher is closed")
            self._items.extend(zip(items, futures))
            self._cond.notify()
        return futures

    def run(self, items: list[In], timeout: float | None = None) -> list[Out]:
        """Submit and wait; raises what the batch function raised for these items."""
        return [f.result(timeout) for f in self.submit_many(items)]

    def waiting(self) -> int:
        """Items submitted and not yet taken into a batch."""
        with self._cond:
            return len(self._items)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if self._closed and not self._items:
                    return
                deadline = time.monotonic() + self.max_wait
                while len(self._items) < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch, self._items = self._items[:self.max_batch], self._items[self.max_batch:]
            self.batch_sizes[len(batch)] += 1
            try:
                results = self.fn([item for item, _ in batch])
            except BaseException as exc:       # hand the error to every waiting caller
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), res in zip(batch, results):
                fut.set_result(res)
