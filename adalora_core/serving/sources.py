"""Where adapters' bytes come from, behind one small interface, and how reading them can fail.

The engine asks an `AdapterSource` for an `AdapterRef`; what the caller already read about the
adapter (its digest, base and location) travels in the ref, so a source never reads it again.
The service's store-backed source lives above the core (`application.adapter_source`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class AdapterRef:
    """An adapter as its caller read it: the immutable id, the sha256 its artifact must have, the
    base it runs on, and where the source finds its bytes.

    The caller (the service's admission step) reads the adapter's record once and passes what it
    read down here; the engine never asks back up. The cache keys an adapter by id and digest, so
    an artifact replaced under the same id is never served from a stale entry.
    """

    adapter_id: str
    sha256: str | None = None
    # The base's name as the serving side knows it; when set it wins over the bundle's own
    # record (which may be the training machine's path to the same base).
    base_model: str | None = None
    location: str | None = None  # the source's handle for the bytes (e.g. a storage key)

    @property
    def cache_key(self) -> tuple[str, str | None]:
        return (self.adapter_id, self.sha256)


@dataclass(frozen=True)
class AdapterBlob:
    """An artifact as read: the zip bytes and the sha256 recorded when it was written.

    ``verified`` says the source already checked the bytes against ``sha256`` while reading
    them (the artifact store does), so the loader does not hash them a second time."""

    data: bytes
    sha256: str
    verified: bool = False


class AdapterSource(Protocol):
    """Where adapters' bytes come from; raises `AdapterNotFound` when it has none for the ref,
    `AdapterUnavailable` when they cannot be read right now, `AdapterCorrupt` when they fail
    their checksum."""

    def read(self, ref: AdapterRef) -> AdapterBlob: ...


class AdapterNotFound(LookupError):
    """The source has no such adapter (or not for this caller)."""


class AdapterCorrupt(RuntimeError):
    """The artifact failed its sha256 check or does not parse; the adapter is marked corrupt."""

    def __init__(self, adapter_id: str, reason: str) -> None:
        super().__init__(f"adapter {adapter_id} is corrupt: {reason}")
        self.adapter_id = adapter_id
        self.reason = reason


class AdapterUnavailable(RuntimeError):
    """The artifact cannot be read right now (missing from the store); the adapter is not
    condemned: the entry goes back to absent and the next request tries again."""


class AdapterIncompatible(RuntimeError):
    """A well-formed adapter this engine cannot serve on its base (unknown module or head)."""


class AdapterTooLarge(RuntimeError):
    """One adapter alone exceeds the device budget, so it can never be resident."""
