"""What both engines' group commits share: a poll waiting on its group gets its answer once."""

from __future__ import annotations

import asyncio


def resolve(future: asyncio.Future[int], result: int | BaseException) -> None:
    """The number of deliveries queued, or why the poll's records were not committed."""
    if future.done():  # a poll cancelled meanwhile: its records are committed all the same
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
