"""Running independent training runs at once: one small executor, nothing shared but read-only data."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

THREAD_PREFIX = "adapter-training"


def run_all(jobs: Sequence[Callable[[], T]], workers: int) -> list[T]:
    """Each job's result, in order; ``workers`` at a time in threads (one: in this thread, one after another).

    Threads suit these jobs: torch and numpy release the GIL in the matrix products that dominate a run,
    and threads of one process time-share cores without the spinning of oversubscribed BLAS threads. The
    results do not depend on ``workers``: every job is deterministic on its own inputs.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [job() for job in jobs]
    with ThreadPoolExecutor(min(workers, len(jobs)), thread_name_prefix=THREAD_PREFIX) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [future.result() for future in futures]


@contextlib.contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch and BLAS threads (numpy's scoring), then restore the caller's settings."""
    if threads is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)
