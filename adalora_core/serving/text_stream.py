"""A generated row's text as the caller sees it: what is final is published, a trailing partial
character or a tail that may still grow into a stop string is held back, and the text ends before
the first stop string."""

from __future__ import annotations

from collections.abc import Sequence


class StreamedText:
    """How much of one row's decoded text has been published, and whether a stop string ended it."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.published = 0  # characters already sent

    def advance(self, text: str, finished: bool) -> tuple[str, bool]:
        """The new part of ``text`` (the row's whole decoded text so far) that may be sent now,
        and whether a stop string ends the row here."""
        end, stopped = len(text), False
        for stop in self.stops:
            at = text.find(stop, max(0, self.published - len(stop) + 1))
            if at != -1 and at < end:
                end, stopped = at, True
        if not (finished or stopped):
            end = _publishable(text, self.stops)
        delta = text[self.published : max(end, self.published)]
        self.published = max(end, self.published)
        return delta, stopped


def _publishable(text: str, stops: Sequence[str]) -> int:
    """How much of an unfinished row's text is final: hold back a trailing partial character
    and any tail that may still grow into a stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, end), 0, -1):
            if text[:end].endswith(stop[:size]):
                held = max(held, size)
                break
    return end - held
