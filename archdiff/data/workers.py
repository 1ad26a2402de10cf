"""Decoding on every core: camera photos cost 100-300 ms each to decode, and Pillow and hashlib release the GIL.

Threads, not processes: nothing to pickle, and the results (small records, bucket-sized images) come back
without copies. Results come back in input order, so what a run learns never depends on the worker count.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor


def default_workers(configured: int | None = None) -> int:
    """The configured count, else the CPUs this process may run on (a container's or taskset's share, not the host's)."""
    if configured:
        return configured
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def ordered_map(function: Callable, items: Iterable, workers: int, ahead: int | None = None) -> Iterator:
    """`map(function, items)` on `workers` threads, in input order, with at most `ahead` items in flight (memory).

    One worker runs in the calling thread, exactly as a plain loop. Items are drawn in the calling thread.
    """
    if workers <= 1:
        yield from map(function, items)
        return
    pending: deque[Future] = deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="archdiff-decode")
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= (ahead or 2 * workers):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
