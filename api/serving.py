"""Serving wiring for the app: build the engine and batcher from Settings at startup.

The engine reads adapters through `StoreAdapterSource`: the adapter row's PEFT zip from the
artifact store, sha256-checked by the store against the row. The lifespan in api.main calls
`startup(app)` / `shutdown(app)`; routes find `app.state.engine` and `app.state.batcher`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from adalora_core.precision import native_bf16
from adalora_core.serving.batcher import DynamicBatcher
from adalora_core.serving.cache import AdapterCorrupt, AdapterNotFound, AdapterUnavailable
from adalora_core.serving.engine import EngineSettings, InferenceEngine
from adalora_core.serving.loading import AdapterBlob
from service.base_models import LocalModelDirs
from service.settings import Settings
from service.store import ArtifactStore, ChecksumMismatch, NotFound
from service.tables import Adapter
from service.vocabulary import ArtifactFormat


def engine_settings(settings: Settings) -> EngineSettings:
    """Serving limits from Settings (env ADALORA_MAX_BATCH_SIZE, ADALORA_INFER_MAX_INPUTS, ...)."""
    return EngineSettings(
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_batch_tokens=settings.max_batch_tokens,
        device_cache_bytes=settings.device_cache_bytes,
        host_cache_bytes=settings.host_cache_bytes,
        pinned_adapters=tuple(settings.pinned_adapters),
        batching=settings.infer_batching,
        max_inputs=settings.infer_max_inputs,
        max_new_tokens=settings.infer_max_new_tokens,
        max_length=settings.infer_max_length,
    )


log = logging.getLogger("adalora.api.serving")

CHECKSUM_READS = 2


@dataclass(frozen=True)
class AdapterRowFacts:
    """What loading needs from an adapter row: its PEFT artifact and its base's registered name."""

    adapter_id: str
    peft: dict[str, Any] | None
    base_model: str

    @classmethod
    def of(cls, row: Adapter) -> AdapterRowFacts:
        peft = (row.formats or {}).get(ArtifactFormat.PEFT)
        return cls(row.id, dict(peft) if peft else None, row.base_model)


# The adapter row a request already read, so a cold load in the same thread does not read it
# again (the cache loads in the thread of the first request that misses).
_row_read: ContextVar[AdapterRowFacts | None] = ContextVar("adalora_adapter_row", default=None)


class StoreAdapterSource:
    """Adapters as the worker stored them: the `peft` zip of the adapter row."""

    def __init__(self, sessions: sessionmaker[Session], store: ArtifactStore) -> None:
        self.sessions = sessions
        self.store = store

    @staticmethod
    @contextmanager
    def row_already_read(facts: AdapterRowFacts) -> Iterator[None]:
        """While inside, a load of that adapter in this thread uses these facts as read."""
        token = _row_read.set(facts)
        try:
            yield
        finally:
            _row_read.reset(token)

    def _row(self, adapter_id: str) -> AdapterRowFacts:
        known = _row_read.get()
        if known is not None and known.adapter_id == adapter_id:
            return known
        with self.sessions() as session:
            row = session.get(Adapter, adapter_id)
            if row is None:
                raise AdapterNotFound(adapter_id)
            return AdapterRowFacts.of(row)

    def read(self, adapter_id: str) -> AdapterBlob:
        facts = self._row(adapter_id)
        info = facts.peft
        if not info:
            raise AdapterCorrupt(adapter_id, "the adapter has no peft artifact")
        # Condemn only on evidence that lasts: a checksum that fails twice. A missing object may
        # be a restore or replication in progress, so it is unavailable, not corrupt.
        mismatch: ChecksumMismatch | None = None
        for _ in range(CHECKSUM_READS):
            try:
                data = self.store.open_read(info["storage_key"], info["sha256"])
                # The row names the base as registered here; older bundles recorded the
                # worker's path to it instead.
                return AdapterBlob(data, info["sha256"], verified=True, base_model=facts.base_model)
            except ChecksumMismatch as exc:
                mismatch = exc
            except NotFound as exc:
                raise AdapterUnavailable(
                    f"adapter {adapter_id}: its stored artifact is missing right now"
                ) from exc
        log.error("adapter %s: %s (read %d times)", adapter_id, mismatch, CHECKSUM_READS)
        raise AdapterCorrupt(adapter_id, "its stored artifact failed its checksum") from mismatch


def default_base_model(settings: Settings) -> str | None:
    """The base a request with adapter_id null runs on when it names none."""
    from service.settings import DEFAULT_MINILM_NAME

    if DEFAULT_MINILM_NAME in settings.base_models:
        return DEFAULT_MINILM_NAME
    return next(iter(settings.base_models), None)


def serving_device(requested: str) -> torch.device:
    """The device /infer runs on; a GPU that is not there falls back to the CPU, loudly."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ValueError(f"ADALORA_INFER_DEVICE: {requested!r} is not a device") from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"ADALORA_INFER_DEVICE: {requested!r}; use auto, cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if (device.index or 0) >= count:
        log.warning("ADALORA_INFER_DEVICE=%s but %d GPU(s) here: serving on cpu", requested, count)
        return torch.device("cpu")
    return device


def serving_dtype(requested: str, device: torch.device) -> torch.dtype:
    """Half precision only where it runs natively; otherwise float32, with a warning."""
    if requested == "float32":
        return torch.float32
    if device.type == "cuda":
        if requested == "float16":
            return torch.float16
        if native_bf16(device):
            return torch.bfloat16
    log.warning("ADALORA_INFER_DTYPE=%s is not native on %s: serving in float32", requested, device)
    return torch.float32


def startup(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    device = serving_device(settings.infer_device)
    engine = InferenceEngine(
        StoreAdapterSource(app.state.sessions, app.state.store),
        engine_settings(settings),
        base_paths=LocalModelDirs(settings.base_models, settings.home),
        device=device,
        dtype=serving_dtype(settings.infer_dtype, device),
    )
    app.state.engine = engine
    app.state.batcher = DynamicBatcher(engine)


def shutdown(app: FastAPI) -> None:
    batcher = getattr(app.state, "batcher", None)
    if batcher is not None:
        batcher.close()
    engine = getattr(app.state, "engine", None)
    if engine is not None:
        engine.close()
