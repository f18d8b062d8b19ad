"""Server-sent events (``text/event-stream``), framed in one place for every stream the API
sends: a job's events (`api.event_stream`) and OpenAI-style token streams (`api.openai_stream`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

MEDIA_TYPE = "text/event-stream"
# Proxies must neither cache nor buffer a stream (nginx honours X-Accel-Buffering).
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_message(
    data: dict[str, Any] | str, *, event: str | None = None, event_id: int | None = None
) -> str:
    """One message; a dict goes out as a single JSON line, so no data line needs splitting."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"id: {event_id}\n" if event_id is not None else ""
    if event is not None:
        head += f"event: {event}\n"
    return f"{head}data: {payload}\n\n"


def sse_response(messages: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(messages, media_type=MEDIA_TYPE, headers=HEADERS)
