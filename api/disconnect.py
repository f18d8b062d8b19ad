"""Work for a client that may go away: when it disconnects before the answer is ready, the work
is cancelled, so its rows leave the batcher or the decoder instead of running for nobody.

Streams need none of this: Starlette cancels a streaming response's generator when its client
disconnects. A plain response only learns it when it tries to send, after all the work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready; there is nobody to answer."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientGone."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientGone
    return task.result()


async def _disconnect(request: Request) -> None:
    """Returns when the client disconnects. The body was read already, so the next message
    the server sends this request is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
