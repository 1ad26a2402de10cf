"""The bounded queue in front of the device (archdiff.serve.jobs) with fake work: no models, a second or two in all."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from archdiff.serve import jobs
from archdiff.serve.jobs import Disconnected, JobQueue, QueueFull, TimedOut


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(jobs, "POLL_SECONDS", 0.01)


async def stays() -> bool:
    return False


def leaves_when(flag: threading.Event):
    async def disconnected() -> bool:
        return flag.is_set()

    return disconnected


class Device:
    """Fake work that records what ran, in which order, and how many ran at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = self.most_active = 0
        self.order: list[str] = []
        self.saw_stop: dict[str, bool] = {}

    def job(self, name: str, seconds: float = 0.02, until: threading.Event | None = None, honours_stop: bool = True):
        def work(should_stop):
            with self.lock:
                self.active += 1
                self.most_active = max(self.most_active, self.active)
                self.order.append(name)
            try:
                end = time.monotonic() + seconds
                while time.monotonic() < end or (until is not None and not until.is_set()):
                    if honours_stop and should_stop():
                        self.saw_stop[name] = True
                        return f"{name} stopped"
                    time.sleep(0.005)
                return name
            finally:
                with self.lock:
                    self.active -= 1

        return work


async def settle(queue: JobQueue, waiting: int) -> None:
    """Until `waiting` requests wait (the event loop has let the new tasks reach the queue)."""
    for _ in range(500):
        if queue.waiting == waiting and queue.state()["running"]:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"expected {waiting} waiting, have {queue.state()}")


def test_one_at_a_time_in_arrival_order():
    device = Device()

    async def main():
        queue = JobQueue(capacity=10, timeout=10)
        tasks = [asyncio.create_task(queue.run(device.job(f"job{i}"), stays)) for i in range(6)]
        results = await asyncio.gather(*tasks)
        state = queue.state()
        queue.close()
        return results, state

    results, state = asyncio.run(main())
    assert results == [f"job{i}" for i in range(6)]
    assert device.order == [f"job{i}" for i in range(6)]
    assert device.most_active == 1
    assert state == {"waiting": 0, "running": False, "capacity": 10}


def test_full_queue_answers_at_once_with_retry_after():
    device, release = Device(), threading.Event()

    async def main():
        queue = JobQueue(capacity=2, timeout=10)
        running = asyncio.create_task(queue.run(device.job("first", until=release), stays))
        waiters = [asyncio.create_task(queue.run(device.job(f"wait{i}"), stays)) for i in range(2)]
        await settle(queue, 2)
        started = time.monotonic()
        with pytest.raises(QueueFull) as full:
            await queue.run(device.job("refused"), stays)
        refused_in = time.monotonic() - started
        release.set()
        results = await asyncio.gather(running, *waiters)
        queue.close()
        return full.value, refused_in, results

    full, refused_in, results = asyncio.run(main())
    assert refused_in < 0.1
    assert full.retry_after >= 1 and isinstance(full.retry_after, int)
    assert "busy" in str(full)
    assert results == ["first", "wait0", "wait1"]
    assert "refused" not in device.order


def test_waiter_past_its_deadline_times_out_and_frees_its_slot():
    device, release = Device(), threading.Event()

    async def main():
        queue = JobQueue(capacity=1, timeout=0.4)
        running = asyncio.create_task(queue.run(device.job("first", until=release, honours_stop=False), stays))
        await asyncio.sleep(0.05)
        with pytest.raises(TimedOut):
            await queue.run(device.job("late"), stays)
        after_timeout = queue.state()
        queue.timeout = 10  # the next request has time enough: it gets the freed place, not a 503
        third = asyncio.create_task(queue.run(device.job("third"), stays))
        await settle(queue, 1)
        release.set()
        with pytest.raises(TimedOut):  # the first job ignored should_stop and finished past its own deadline
            await running
        result = await third
        queue.close()
        return after_timeout, result

    after_timeout, result = asyncio.run(main())
    assert after_timeout == {"waiting": 0, "running": True, "capacity": 1}
    assert result == "third"
    assert device.order == ["first", "third"]


def test_disconnected_waiter_leaves_the_queue():
    device, release, gone = Device(), threading.Event(), threading.Event()

    async def main():
        queue = JobQueue(capacity=1, timeout=10)
        running = asyncio.create_task(queue.run(device.job("first", until=release), stays))
        leaver = asyncio.create_task(queue.run(device.job("leaver"), leaves_when(gone)))
        await settle(queue, 1)
        gone.set()
        with pytest.raises(Disconnected):
            await leaver
        state = queue.state()
        release.set()
        result = await running
        queue.close()
        return state, result

    state, result = asyncio.run(main())
    assert state == {"waiting": 0, "running": True, "capacity": 1}
    assert result == "first"
    assert device.order == ["first"]


def test_running_job_past_its_deadline_is_stopped_and_the_next_runs():
    device = Device()

    async def main():
        queue = JobQueue(capacity=4, timeout=1.0)
        started = time.monotonic()
        endless = asyncio.create_task(queue.run(device.job("endless", seconds=60), stays))
        await asyncio.sleep(0.6)
        following = asyncio.create_task(queue.run(device.job("next"), stays))
        with pytest.raises(TimedOut):
            await endless
        stopped_after = time.monotonic() - started
        result = await following
        queue.close()
        return stopped_after, result

    stopped_after, result = asyncio.run(main())
    assert device.saw_stop == {"endless": True}
    assert 1.0 <= stopped_after < 1.5
    assert result == "next"
    assert device.order == ["endless", "next"]


def test_running_job_whose_client_leaves_is_stopped():
    device, gone = Device(), threading.Event()

    async def main():
        queue = JobQueue(capacity=4, timeout=30)
        endless = asyncio.create_task(queue.run(device.job("endless", seconds=60), leaves_when(gone)))
        await asyncio.sleep(0.1)
        gone.set()
        with pytest.raises(Disconnected):
            await endless
        result = await queue.run(device.job("next"), stays)
        queue.close()
        return result

    assert asyncio.run(main()) == "next"
    assert device.saw_stop == {"endless": True}


def test_failing_job_raises_and_frees_the_device():
    def broken(should_stop):
        raise RuntimeError("out of memory")

    async def main():
        queue = JobQueue(capacity=2, timeout=10)
        with pytest.raises(RuntimeError, match="out of memory"):
            await queue.run(broken, stays)
        result = await queue.run(Device().job("after"), stays)
        state = queue.state()
        queue.close()
        return result, state

    result, state = asyncio.run(main())
    assert result == "after"
    assert state["running"] is False


def test_stopped_job_that_raises_logs_nothing(caplog):
    import gc

    def stops_by_raising(should_stop):
        while not should_stop():
            time.sleep(0.005)
        raise InterruptedError("stopped between steps")  # what Engine.generate does (engine.Stopped)

    async def main():
        queue = JobQueue(capacity=1, timeout=0.1)
        with pytest.raises(TimedOut):
            await queue.run(stops_by_raising, stays)
        queue.close()

    with caplog.at_level("ERROR", logger="asyncio"):
        asyncio.run(main())
        gc.collect()
    assert "never retrieved" not in caplog.text
