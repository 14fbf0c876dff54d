"""A deadline psycopg cannot stretch. Cancelled while a query runs, psycopg asks the server to
cancel it and waits for that up to 5 s, then up to 5 s more for the query to end: a frozen network
turns a 5 s deadline into 15 s, and a stop into a SIGKILL. Cancelled a second time while it waits,
it closes the connection at once. So a call that must end is run as a task that is cancelled
twice when its time is up (or when our caller is cancelled): it ends within a second of that, its
connection closed (the pool replaces it), nothing of its transaction committed."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
SECOND_CANCEL = 0.2  # seconds the first cancellation gets before the second
ABANDON = 1.0  # seconds we wait for a task cancelled twice before leaving it behind


async def bounded(work: Coroutine[Any, Any, T], deadline: float | None) -> T:
    """`work`'s result, or TimeoutError once `deadline` seconds passed (None: no deadline, but
    a cancellation of ours still ends it promptly)."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=deadline)
    except asyncio.CancelledError:
        await stop(task)
        raise
    if not done:
        await stop(task)
        raise TimeoutError
    return task.result()


async def stop(task: asyncio.Future[Any]) -> None:
    """Cancel, and cancel again if the first is not enough; never wait long for it."""
    for wait in (SECOND_CANCEL, ABANDON):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=wait)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: a failure after the deadline is not "never retrieved"
