"""The bounded queue in front of the device: one request draws at a time, at most `capacity` wait, none waits forever.

A full queue answers at once (QueueFull: 503 with Retry-After) instead of letting clients pile up; each request has
one deadline from its arrival, waiting included (TimedOut: 504); a client that leaves gives up its place in the
queue, or, while drawing, stops its job at the next denoising step, so the device goes to the next request.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

POLL_SECONDS = 0.25  # how often a waiting or running request looks at its deadline and its client


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy ({retry_after} s estimated); retry later")
        self.retry_after = retry_after


class TimedOut(Exception):
    pass


class Disconnected(Exception):
    pass


class JobQueue:
    """FIFO admission to a single worker thread (the device), with a deadline and a disconnect check per request."""

    def __init__(self, capacity: int, timeout: float):
        self.capacity, self.timeout = capacity, timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archdiff-device")
        self._busy = False
        self._waiters: deque[asyncio.Future] = deque()
        self._seconds: deque[float] = deque(maxlen=20)  # recent job durations, for Retry-After

    @property
    def waiting(self) -> int:
        return sum(not waiter.done() for waiter in self._waiters)

    def state(self) -> dict[str, Any]:
        return {"waiting": self.waiting, "running": self._busy, "capacity": self.capacity}

    def retry_after(self) -> int:
        typical = sum(self._seconds) / len(self._seconds) if self._seconds else 5.0
        return max(1, math.ceil(typical * (self.waiting + 1)))

    async def run(self, work: Callable[[Callable[[], bool]], Any], disconnected: Callable[[], Awaitable[bool]]) -> Any:
        """`work(should_stop)` on the device thread when its turn comes; its result, or QueueFull/TimedOut/Disconnected."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if self._busy and self.waiting >= self.capacity:
            raise QueueFull(self.retry_after())
        await self._acquire(loop, deadline, disconnected)
        stop, why = threading.Event(), None
        started = time.perf_counter()
        try:
            future = loop.run_in_executor(self._executor, work, stop.is_set)
            while not future.done():
                await asyncio.wait({future}, timeout=POLL_SECONDS)
                if why is None and loop.time() > deadline:
                    why = TimedOut
                elif why is None and await disconnected():
                    why = Disconnected
                if why is not None:
                    stop.set()  # the device is free only when the job has stopped: wait for it
            if why is not None:
                raise why from future.exception()  # retrieved: the stopped job's own error is expected
            return future.result()
        finally:
            self._seconds.append(time.perf_counter() - started)
            self._release()

    async def _acquire(self, loop, deadline: float, disconnected) -> None:
        if not self._busy and not self._waiters:
            self._busy = True
            return
        turn = loop.create_future()
        self._waiters.append(turn)
        try:
            while not turn.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimedOut
                if await disconnected():
                    raise Disconnected
                await asyncio.wait({turn}, timeout=min(POLL_SECONDS, remaining))
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._release()  # the device was just handed over: pass it on
            else:
                turn.cancel()
            raise
        finally:
            if turn in self._waiters:
                self._waiters.remove(turn)

    def _release(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # still busy: the device goes straight to the next in line
                return
        self._busy = False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
