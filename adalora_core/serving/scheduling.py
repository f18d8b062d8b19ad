"""Which waiting rows join a decoder's batch: fair across tenants, and bounded.

Rows wait in one queue per tenant and are served round-robin, one row per tenant per turn, so
a tenant with thousands of rows queued delays another tenant's next row by one turn, not by
its whole backlog (LoRAX schedules adapters the same way). The queue is bounded for the whole
decoder and for each tenant: a request whose rows do not all fit is refused at once
(`DecoderBusy`), so a flood is answered with "retry later" instead of waiting without bound.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# What a busy decoder tells callers to wait before they try again.
RETRY_AFTER_S = 1.0


class DecoderBusy(RuntimeError):
    """The decoder's queue cannot take these rows now; the caller should retry later."""

    def __init__(self, message: str, retry_after_s: float = RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class QueueLimits:
    """Rows that may wait beyond the running batch's free places, in all and for one tenant
    (None: no bound). A request is refused only while its tenant (or everyone) already waits
    that many rows beyond the batch, so a lone large request is always taken whole and the
    queue is bounded by the limit plus one request."""

    max_rows: int | None = None
    max_rows_per_tenant: int | None = None


@dataclass(frozen=True)
class RunningLimits:
    """The most rows one tenant runs in a decode batch: ``alone`` while no other tenant has
    rows running or waiting, ``shared`` while one does (None: no cap). A lone tenant may use
    most of the batch; once another tenant comes, the first gives back the rows above
    ``shared``, because every row in the batch slows each step for everyone in it (on two
    CPU cores a step of 17 rows takes about 3x a step of one: docs/reliability.md)."""

    alone: int | None = None
    shared: int | None = None

    def cap(self, tenants: int) -> int | None:
        """The cap while ``tenants`` tenants have rows running or waiting."""
        if tenants <= 1 or self.shared is None:
            return self.alone
        return self.shared if self.alone is None else min(self.alone, self.shared)


class FairQueue(Generic[T]):
    """Thread-safe: callers `put` from any thread, the decode thread takes."""

    def __init__(self, limits: QueueLimits | None = None) -> None:
        self.limits = limits or QueueLimits()
        self._by_tenant: OrderedDict[str, deque[T]] = OrderedDict()
        self._size = 0
        self._closed = False
        self._changed = threading.Condition()

    def __len__(self) -> int:
        return self._size

    def queued(self, tenant: str) -> int:
        with self._changed:
            return len(self._by_tenant.get(tenant, ()))

    def tenants(self) -> list[str]:
        with self._changed:
            return list(self._by_tenant)

    def items(self) -> list[T]:
        """Everything waiting, in no particular order (a snapshot)."""
        with self._changed:
            return [item for line in self._by_tenant.values() for item in line]

    def put(self, tenant: str, items: Sequence[T], room: int = 0) -> None:
        """Queue all of ``items`` or none: DecoderBusy when rows already wait beyond the
        ``room`` the batch has free, as many as a bound allows."""
        with self._changed:
            if self._closed:
                raise RuntimeError("the decoder is closed")
            total, mine = self.limits.max_rows, self.limits.max_rows_per_tenant
            if total is not None and self._size - room >= total:
                raise DecoderBusy(
                    f"the generation queue is full ({self._size} rows wait for "
                    f"{room} free places in the batch)"
                )
            held = len(self._by_tenant.get(tenant, ()))
            if mine is not None and held - room >= mine:
                raise DecoderBusy(
                    f"{held} of this tenant's rows already wait to generate; retry when some "
                    "have started"
                )
            self._queue_of(tenant).extend(items)
            self._size += len(items)
            self._changed.notify()

    def put_front(self, tenant: str, item: T) -> None:
        """A row taken out of the batch (preempted) waits first in its tenant's line; it was
        accepted once, so no bound refuses it."""
        with self._changed:
            self._queue_of(tenant).appendleft(item)
            self._size += 1
            self._changed.notify()

    def peek(self, passed: Collection[str] = ()) -> tuple[str, T] | None:
        """The row whose turn it is: the first of the tenant longest without one, leaving out
        the tenants ``passed`` over in this round (their next row did not fit)."""
        with self._changed:
            for tenant, items in self._by_tenant.items():
                if items and tenant not in passed:
                    return tenant, items[0]
            return None

    def take(self, tenant: str) -> T:
        """Take that tenant's first row; the tenant's turn moves to the back of the line."""
        with self._changed:
            items = self._by_tenant[tenant]
            item = items.popleft()
            self._size -= 1
            self._by_tenant.move_to_end(tenant)
            if not items:
                del self._by_tenant[tenant]
            return item

    def remove_if(self, doomed: Callable[[T], bool]) -> list[T]:
        """Take out every waiting row ``doomed`` picks (cancelled ones), in queue order."""
        removed: list[T] = []
        with self._changed:
            for tenant in list(self._by_tenant):
                items = self._by_tenant[tenant]
                kept = deque(i for i in items if not doomed(i))
                removed += [i for i in items if doomed(i)]
                if kept:
                    self._by_tenant[tenant] = kept
                else:
                    del self._by_tenant[tenant]
            self._size -= len(removed)
        return removed

    def drain(self) -> Iterator[T]:
        with self._changed:
            items = [i for q in self._by_tenant.values() for i in q]
            self._by_tenant.clear()
            self._size = 0
        yield from items

    def wait(self) -> bool:
        """Block until a row waits or the queue closes; False once closed."""
        with self._changed:
            while not self._size and not self._closed:
                self._changed.wait()
            return not self._closed

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _queue_of(self, tenant: str) -> deque[T]:
        items = self._by_tenant.get(tenant)
        if items is None:
            items = self._by_tenant[tenant] = deque()
        return items
