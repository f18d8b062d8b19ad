"""The caller's side of a generation: a handle per row, the events it receives, and how a
request waits for all of its rows.

The decode thread publishes `TextEvent`s; a handle made inside an event loop receives them on an
asyncio queue, one made outside on a blocking queue. Cancelling a handle makes its row leave the
batch at the next decode step.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from adalora_core.serving.generation import GenerationParams
from adalora_core.serving.loading import LoadedAdapter
from adalora_core.serving.sampling import TokenLogprob

FINISH_STOP = "stop"  # an end-of-sequence token or a stop string
FINISH_LENGTH = "length"  # max_new_tokens reached
FINISH_CANCELLED = "cancelled"


@dataclass(frozen=True)
class TextEvent:
    """What a row produced since its last event; `finish` is set on its last one."""

    delta: str
    tokens: int  # tokens generated so far
    finish: str | None = None
    error: BaseException | None = None
    # The tokens generated since the last event, when the row reports log-probabilities
    # (an end-of-sequence token is not reported: it is not in the text).
    logprobs: tuple[TokenLogprob, ...] = ()
    # On a row's first event, when it asked for them: its prompt tokens after the first.
    prompt_logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish: str
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob, ...] = ()


class Generation:
    """The caller's handle on one row: its events, in order, from the decode thread.

    Created inside an event loop it feeds an asyncio queue (`events()`); otherwise a blocking one
    (`wait()`). `cancel()` makes the row leave the batch at the next step.
    """

    def __init__(
        self,
        prompt_ids: Sequence[int],
        adapter: LoadedAdapter | None,
        sampling: GenerationParams,
        tenant: str = "",
    ):
        self.prompt_ids = list(prompt_ids)
        self.adapter = adapter
        self.sampling = sampling
        self.tenant = tenant  # whose turn it is when the decoder admits rows fairly
        self.cancelled = threading.Event()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._async: asyncio.Queue[TextEvent] = asyncio.Queue()
        self._blocking: queue.SimpleQueue[TextEvent] = queue.SimpleQueue()

    @property
    def adapter_key(self) -> str:
        return "" if self.adapter is None else self.adapter.adapter_id

    def cancel(self) -> None:
        self.cancelled.set()

    def publish(self, event: TextEvent) -> None:
        if self._loop is None:
            self._blocking.put(event)
            return
        try:
            self._loop.call_soon_threadsafe(self._async.put_nowait, event)
        except RuntimeError:  # the caller's loop has closed: nobody is listening
            self.cancelled.set()

    async def events(self) -> AsyncIterator[TextEvent]:
        while True:
            event = await self._async.get()
            if event.error is not None:
                raise event.error
            yield event
            if event.finish is not None:
                return

    async def complete(self) -> Completion:
        return self._completion([e async for e in self.events()])

    def next_event(self, timeout: float | None = None) -> TextEvent:
        """The next event, blocking (a handle made outside an event loop)."""
        event = self._blocking.get(timeout=timeout)
        if event.error is not None:
            raise event.error
        return event

    def wait(self, timeout: float | None = None) -> Completion:
        seen: list[TextEvent] = []
        while not seen or seen[-1].finish is None:
            seen.append(self.next_event(timeout))
        return self._completion(seen)

    def _completion(self, events: list[TextEvent]) -> Completion:
        last = events[-1]
        text = "".join(e.delta for e in events)
        logprobs = tuple(entry for e in events for entry in e.logprobs)
        prompt = tuple(entry for e in events for entry in e.prompt_logprobs)
        finish = last.finish or FINISH_STOP
        return Completion(text, len(self.prompt_ids), last.tokens, finish, logprobs, prompt)


async def complete_all(handles: Sequence[Generation]) -> list[Completion]:
    """Every row's completion; when the caller goes away first (its task is cancelled), or one
    row fails, the rest are cancelled too, so abandoned rows stop using the decoder."""
    try:
        return list(await asyncio.gather(*(h.complete() for h in handles)))
    finally:
        for handle in handles:
            handle.cancel()
