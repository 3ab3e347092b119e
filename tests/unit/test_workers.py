"""workers.WorkerPool: results and exceptions back on the loop; growth when blocked."""

from __future__ import annotations

import asyncio
import threading

import pytest
from conftest import wait_for

from iocmng.runtime.workers import WorkerPool


@pytest.fixture
async def pool():
    p = WorkerPool(asyncio.get_running_loop(), min_workers=2, max_workers=8)
    yield p
    p.close()


async def test_result_comes_back_from_a_worker_thread(pool: WorkerPool) -> None:
    loop_thread = threading.get_ident()
    result = await pool.run(lambda a, b: (a + b, threading.get_ident()), 2, 3)
    assert result[0] == 5
    assert result[1] != loop_thread, "sync work must not run on the loop thread"


async def test_exception_is_raised_in_the_awaiting_coroutine(pool: WorkerPool) -> None:
    def boom() -> None:
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        await pool.run(boom)
    assert await pool.run(lambda: "still works") == "still works"


async def test_many_results_in_order_of_submission(pool: WorkerPool) -> None:
    futures = [pool.submit(lambda i=i: i * i) for i in range(500)]
    assert await asyncio.gather(*futures) == [i * i for i in range(500)]
    assert pool.size <= 8


async def test_pool_grows_when_every_worker_is_blocked(pool: WorkerPool) -> None:
    release = threading.Event()
    started = threading.Semaphore(0)

    def block() -> str:
        started.release()
        release.wait(30)
        return "released"

    assert pool.size == 2
    blocked = [pool.submit(block) for _ in range(4)]
    # with 4 blocked workers, other work must still run
    assert await asyncio.wait_for(pool.run(lambda: "free"), 10) == "free"
    assert pool.size >= 5
    for _ in range(4):
        assert await asyncio.to_thread(started.acquire, True, 10)
    release.set()
    assert await asyncio.gather(*blocked) == ["released"] * 4


async def test_pool_does_not_grow_past_max() -> None:
    pool = WorkerPool(asyncio.get_running_loop(), min_workers=1, max_workers=3)
    release = threading.Event()
    try:
        futures = [pool.submit(release.wait, 30) for _ in range(6)]
        assert pool.size == 3
        release.set()
        assert all(await asyncio.gather(*futures))
    finally:
        release.set()
        pool.close()


async def test_pool_does_not_grow_for_sequential_work(pool: WorkerPool) -> None:
    for i in range(50):
        assert await pool.run(lambda i=i: i) == i
    assert pool.size == 2


async def test_cancelled_future_is_skipped(pool: WorkerPool) -> None:
    release = threading.Event()
    fut = pool.submit(release.wait, 30)
    fut.cancel()
    release.set()
    # the worker's completion for a cancelled future must not raise InvalidStateError
    assert await pool.run(lambda: 1) == 1


async def test_closed_pool_refuses_work() -> None:
    pool = WorkerPool(asyncio.get_running_loop(), min_workers=1)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(lambda: None)


async def test_pool_shrinks_back_after_a_burst() -> None:
    pool = WorkerPool(asyncio.get_running_loop(), min_workers=2, max_workers=16)
    pool.idle_exit = 0.2
    release = threading.Event()
    try:
        futures = [pool.submit(release.wait, 5) for _ in range(10)]
        assert pool.size >= 10  # grew: every worker was blocked
        release.set()
        assert all(await asyncio.gather(*futures))
        await wait_for(lambda: pool.size == 2, timeout=5, what="pool back to its minimum")
        # the pool still works, and grows again when needed
        assert await pool.run(lambda: 42) == 42
    finally:
        release.set()
        pool.close()
