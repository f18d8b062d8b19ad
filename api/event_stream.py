"""A job's event log as server-sent events (``text/event-stream``).

The stream polls the database in short transactions instead of holding a connection: a console
watching a long job must not keep a pool slot for an hour. Each event goes out with its id, so a
client that reconnects with ``Last-Event-ID`` resumes after the last one it saw (the browser's
EventSource does this by itself). Comment lines keep idle proxies from closing the connection.
Once the job has ended and every event is out, an ``end`` event closes the stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.schemas import EventOut
from api.sse import MEDIA_TYPE, sse_message
from service import jobs as job_rows
from service.tables import Job
from service.vocabulary import TERMINAL

# Events read per poll; a full page is followed at once by the next, without waiting.
PAGE = 500
# Tells EventSource how long to wait before reconnecting after a dropped connection.
RETRY_MS = 2000


def wants_event_stream(accept: str | None) -> bool:
    """The client asked for the stream rather than a page of JSON."""
    return MEDIA_TYPE in (accept or "")


@dataclass(frozen=True)
class StreamTiming:
    poll_s: float
    keepalive_s: float
    max_s: float


def _read(
    sessions: sessionmaker[Session], job_id: str, after: int | None
) -> tuple[str | None, list[dict[str, Any]]]:
    """The job's status, then the events after ``after``: the status is read first, so when it
    is terminal every event written before the job ended is in the same answer."""
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None, []
        status = job.status
        events = job_rows.list_events(session, job, after, PAGE)
        return status, [
            EventOut.model_validate(e, from_attributes=True).model_dump(mode="json") for e in events
        ]


async def job_events(
    sessions: sessionmaker[Session], job_id: str, after: int | None, timing: StreamTiming
) -> AsyncIterator[str]:
    yield f"retry: {RETRY_MS}\n\n"
    started = last_sent = time.monotonic()
    while True:
        status, events = await run_in_threadpool(_read, sessions, job_id, after)
        for event in events:
            after = event["id"]
            yield sse_message(event, event=event["kind"], event_id=event["id"])
        now = time.monotonic()
        if events:
            last_sent = now
        if status is None or (status in TERMINAL and len(events) < PAGE):
            yield sse_message({"status": status}, event="end")
            return
        if len(events) == PAGE:
            continue
        if now - started >= timing.max_s:
            return  # the client reconnects with Last-Event-ID and goes on
        if now - last_sent >= timing.keepalive_s:
            yield ": keep-alive\n\n"
            last_sent = now
        await asyncio.sleep(timing.poll_s)
