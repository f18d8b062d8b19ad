"""Adapters as the worker stored them: the `peft` zip named by an adapter's record, read from the
artifact store with its sha256 checked while reading.

The core's engine asks for an `AdapterRef` that the admission step built from the record it had
already read, so this source reads bytes only, never a row.
"""

from __future__ import annotations

import logging

from adalora_core.serving.sources import (
    AdapterBlob,
    AdapterCorrupt,
    AdapterRef,
    AdapterUnavailable,
)
from service.store import ArtifactStore, ChecksumMismatch, NotFound

log = logging.getLogger("adalora.application.adapter_source")

# Condemn only on evidence that lasts: a checksum that fails on this many reads.
CHECKSUM_READS = 2


class StoreAdapterSource:
    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    def read(self, ref: AdapterRef) -> AdapterBlob:
        if ref.location is None or ref.sha256 is None:
            raise AdapterCorrupt(ref.adapter_id, "the adapter has no peft artifact")
        mismatch: ChecksumMismatch | None = None
        for _ in range(CHECKSUM_READS):
            try:
                data = self.store.open_read(ref.location, ref.sha256)
                return AdapterBlob(data, ref.sha256, verified=True)
            except ChecksumMismatch as exc:
                mismatch = exc
            except NotFound as exc:
                # A restore or replication in progress: unavailable, not corrupt.
                raise AdapterUnavailable(
                    f"adapter {ref.adapter_id}: its stored artifact is missing right now"
                ) from exc
        log.error("adapter %s: %s (read %d times)", ref.adapter_id, mismatch, CHECKSUM_READS)
        raise AdapterCorrupt(
            ref.adapter_id, "its stored artifact failed its checksum"
        ) from mismatch
