"""Two-tier LRU cache of loaded adapters with single-flight loading and an explicit state machine.

States: ``absent → loading → ready_device ⇄ ready_host → evicted`` (and back to loading on the
next request), or ``loading → corrupt`` when the artifact fails its checksum or does not parse.
A corrupt adapter stays corrupt (requests fail fast) until it is evicted by id, e.g. when the
adapter is deleted or re-uploaded. Entries are keyed by the adapter's immutable id and the digest
of its artifact (`AdapterRef.cache_key`), never by a name. Loads run outside the lock;
concurrent requests for the same cold adapter wait on the first caller's future, so the artifact
is read and parsed once.

Budgets count the bytes of the adapters' tensors. An adapter still used by an in-flight batch
may outlive its eviction by that batch's duration (the batch holds a reference).
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import torch

from adalora_core.serving.sources import AdapterCorrupt, AdapterRef, AdapterTooLarge
from adalora_core.state_machine import check_transition


class AdapterState(enum.Enum):
    ABSENT = "absent"
    LOADING = "loading"
    READY_DEVICE = "ready_device"
    READY_HOST = "ready_host"
    EVICTED = "evicted"
    CORRUPT = "corrupt"


_TRANSITIONS: dict[AdapterState, frozenset[AdapterState]] = {
    AdapterState.ABSENT: frozenset({AdapterState.LOADING}),
    AdapterState.EVICTED: frozenset({AdapterState.LOADING}),
    AdapterState.LOADING: frozenset(
        {AdapterState.READY_DEVICE, AdapterState.CORRUPT, AdapterState.ABSENT}
    ),
    AdapterState.READY_DEVICE: frozenset({AdapterState.READY_HOST, AdapterState.EVICTED}),
    AdapterState.READY_HOST: frozenset({AdapterState.READY_DEVICE, AdapterState.EVICTED}),
    AdapterState.CORRUPT: frozenset({AdapterState.ABSENT}),
}


def check_adapter_transition(old: AdapterState, new: AdapterState) -> None:
    """A move outside the table is a cache bug (IllegalTransition)."""
    check_transition("adapter cache", _TRANSITIONS, old, new)


class Cacheable(Protocol):
    nbytes: int

    def to(self, device: torch.device) -> Cacheable: ...


V = TypeVar("V", bound=Cacheable)


@dataclass
class _Entry(Generic[V]):
    state: AdapterState
    value: V | None = None
    future: Future[V] | None = None
    reason: str = ""

    def move(self, new: AdapterState) -> None:
        check_adapter_transition(self.state, new)
        self.state = new


@dataclass
class CacheStats:
    loads: int = 0
    hits: int = 0
    promotions: int = 0
    demotions: int = 0
    evictions: int = 0
    peak_device_bytes: int = 0
    peak_host_bytes: int = 0


Key = tuple[str, str | None]  # (adapter id, artifact sha256)


@dataclass
class AdapterCache(Generic[V]):
    """Adapters by ref: `get` returns one resident on `device`, loading it at most once."""

    load: Callable[[AdapterRef], V]
    device_budget: int
    host_budget: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    pinned: frozenset[str] = frozenset()
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Key, _Entry[V]] = {}
        self._device_lru: OrderedDict[Key, int] = OrderedDict()
        self._host_lru: OrderedDict[Key, int] = OrderedDict()

    # ---- queries -------------------------------------------------------------------------
    def state(self, adapter_id: str) -> AdapterState:
        """The state of the adapter's entry (of any digest), absent when it has none."""
        with self._lock:
            found = [e.state for k, e in self._entries.items() if k[0] == adapter_id]
            return found[0] if found else AdapterState.ABSENT

    @property
    def device_bytes(self) -> int:
        return sum(self._device_lru.values())

    @property
    def host_bytes(self) -> int:
        return sum(self._host_lru.values())

    def resident(self) -> list[str]:
        """Ids of the adapters held in either tier."""
        with self._lock:
            return [key[0] for key in (*self._device_lru, *self._host_lru)]

    def get_resident(self, ref: AdapterRef) -> V | None:
        """The adapter if it is ready on the device, else None; never loads or promotes, so an
        event loop may call it."""
        key = ref.cache_key
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.state is not AdapterState.READY_DEVICE:
                return None
            self._device_lru.move_to_end(key)
            self.stats.hits += 1
            assert entry.value is not None
            return entry.value

    # ---- the one entry point -------------------------------------------------------------
    def get(self, ref: AdapterRef) -> V:
        key = ref.cache_key
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(AdapterState.ABSENT)
            if entry.state is AdapterState.READY_DEVICE:
                self._device_lru.move_to_end(key)
                self.stats.hits += 1
                assert entry.value is not None
                return entry.value
            if entry.state is AdapterState.READY_HOST:
                self.stats.hits += 1
                return self._promote(key, entry)
            if entry.state is AdapterState.CORRUPT:
                raise AdapterCorrupt(ref.adapter_id, entry.reason)
            if entry.state is AdapterState.LOADING:
                assert entry.future is not None
                waiting, leader = entry.future, False
            else:
                entry.move(AdapterState.LOADING)
                entry.future = waiting = Future()
                waiting.set_running_or_notify_cancel()
                leader = True
        if leader:
            return self._load(ref, entry, waiting)
        return waiting.result()

    def _load(self, ref: AdapterRef, entry: _Entry[V], future: Future[V]) -> V:
        key = ref.cache_key
        try:
            value = self.load(ref)
            if value.nbytes > self.device_budget:
                raise AdapterTooLarge(
                    f"adapter {ref.adapter_id} needs {value.nbytes} bytes, more than the device "
                    f"cache budget of {self.device_budget}"
                )
        except AdapterCorrupt as exc:
            with self._lock:
                entry.move(AdapterState.CORRUPT)
                entry.reason, entry.future = exc.reason, None
            future.set_exception(exc)
            raise
        except BaseException as exc:
            with self._lock:
                entry.move(AdapterState.ABSENT)
                entry.future = None
            future.set_exception(exc)
            raise
        with self._lock:
            self.stats.loads += 1
            entry.move(AdapterState.READY_DEVICE)
            entry.value, entry.future = value, None
            self._device_lru[key] = value.nbytes
            self._shrink(keep=key)
        future.set_result(value)
        return value

    # ---- tiers (called with the lock held) -----------------------------------------------
    def _promote(self, key: Key, entry: _Entry[V]) -> V:
        assert entry.value is not None
        entry.move(AdapterState.READY_DEVICE)
        entry.value = entry.value.to(self.device)  # type: ignore[assignment]
        self._device_lru[key] = self._host_lru.pop(key)
        self.stats.promotions += 1
        self._shrink(keep=key)
        return entry.value  # type: ignore[return-value]

    def _shrink(self, keep: Key) -> None:
        for victim in self._victims(self._device_lru, self.device_budget, keep):
            entry = self._entries[victim]
            assert entry.value is not None
            entry.move(AdapterState.READY_HOST)
            entry.value = entry.value.to(torch.device("cpu"))  # type: ignore[assignment]
            self._host_lru[victim] = self._device_lru.pop(victim)
            self.stats.demotions += 1
        for victim in self._victims(self._host_lru, self.host_budget, keep):
            self._drop(victim)
        self.stats.peak_device_bytes = max(self.stats.peak_device_bytes, self.device_bytes)
        self.stats.peak_host_bytes = max(self.stats.peak_host_bytes, self.host_bytes)

    def _victims(self, lru: OrderedDict[Key, int], budget: int, keep: Key) -> Iterable[Key]:
        used = sum(lru.values())
        chosen: list[Key] = []
        for key, size in lru.items():
            if used <= budget:
                break
            if key == keep or key[0] in self.pinned:
                continue
            chosen.append(key)
            used -= size
        return chosen

    def _drop(self, key: Key) -> None:
        entry = self._entries[key]
        entry.move(AdapterState.EVICTED)
        entry.value = None
        self._device_lru.pop(key, None)
        self._host_lru.pop(key, None)
        self.stats.evictions += 1

    # ---- explicit removal ----------------------------------------------------------------
    def evict(self, adapter_id: str) -> None:
        """Forget an adapter, every digest of it (deleted, replaced, corrupt to retry); a load
        in flight finishes."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == adapter_id]:
                entry = self._entries[key]
                if entry.state in (AdapterState.READY_DEVICE, AdapterState.READY_HOST):
                    self._drop(key)
                elif entry.state is AdapterState.CORRUPT:
                    entry.move(AdapterState.ABSENT)
                if entry.state is not AdapterState.LOADING:
                    del self._entries[key]
