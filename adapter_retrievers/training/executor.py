"""Running independent training runs at once: one small executor, nothing shared but read-only data."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")

THREAD_PREFIX = "adapter-training"


class Pool:
    """``workers`` threads that run independent jobs; with one worker, jobs run in the caller's thread.

    Threads suit these jobs: torch and numpy release the GIL in the matrix products that dominate a run,
    and threads of one process time-share cores without the spinning of oversubscribed BLAS threads. The
    results do not depend on ``workers``: every job is deterministic on its own inputs.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> Pool:
        if self.workers > 1:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=THREAD_PREFIX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def submit(self, job: Callable[[], T]) -> Future[T]:
        """Start ``job`` on a worker (with one worker: run it now, in the caller's thread)."""
        if self._pool is not None:
            return self._pool.submit(job)
        future: Future[T] = Future()
        try:
            future.set_result(job())
        except BaseException as error:  # raised again by future.result(), as a worker's would be
            future.set_exception(error)
        return future

    @staticmethod
    def first_done(futures: Collection[Future]) -> set[Future]:
        """Wait until at least one of ``futures`` is done; the done ones."""
        return wait(futures, return_when=FIRST_COMPLETED).done


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
