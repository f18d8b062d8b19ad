"""A tenant's adapters as serving sees them: the record read once per request (or once per
``lookup_cache_ttl_s``), checked for the tenant and its status, and turned into the `AdapterRef`
the engine loads from.

Profiling /infer at 32 clients showed the adapter-row read starving the forward thread
(docs/benchmarks.md), so records are cached briefly; this process forgets one at once when it
deletes an adapter or condemns one as corrupt, and another API process sees it within the TTL.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from adalora_core.serving.sources import AdapterRef
from adalora_core.tasks import MODEL_KIND, ModelKind
from application import model_names
from application.errors import RequestError, not_found
from application.ttl_cache import TtlCache
from service import adapters as adapter_rows
from service import checkpoints as checkpoint_rows
from service.tables import Adapter, Checkpoint
from service.vocabulary import ArtifactFormat

CORRUPT = "corrupt"


@dataclass(frozen=True)
class AdapterRecord:
    """What serving needs of an adapter row: where its artifact is, what it runs on and as."""

    ref: AdapterRef
    task: str

    @property
    def kind(self) -> ModelKind:
        return MODEL_KIND[self.task]

    @classmethod
    def of(cls, row: Adapter | Checkpoint) -> AdapterRecord:
        peft = (row.formats or {}).get(ArtifactFormat.PEFT) or {}
        ref = AdapterRef(
            adapter_id=row.id,
            sha256=peft.get("sha256"),
            base_model=row.base_model,
            location=peft.get("storage_key"),
        )
        return cls(ref, row.task)


class AdapterDirectory:
    """Thread-safe; `find` may read SQL, `find_cached` never does (an event loop may call it)."""

    def __init__(self, sessions: sessionmaker[Session], ttl_s: float) -> None:
        self.sessions = sessions
        self.records: TtlCache[tuple[str, str], AdapterRecord] = TtlCache(ttl_s)

    def find(self, tenant_id: str, adapter_id: str) -> AdapterRecord:
        """The tenant's servable adapter, by its id, its name or its job's fine-tuned name, or
        a checkpoint by its id or name; 404 for another tenant's or an unknown one, 409 for an
        adapter condemned as corrupt.

        A name (an adapter's own, or a fine-tuned one) is never cached, only the record it
        resolves to, under its id: a name is read from SQL every time, so an adapter deleted and
        imported again under its name is served as the new one at once, in every process (the
        engine's cache is keyed by the immutable id and digest, never by the name)."""
        cached = self.records.get((tenant_id, adapter_id))
        if cached is not None:
            return cached
        with self.sessions() as session:
            row: Adapter | Checkpoint | None
            if checkpoint_rows.is_checkpoint_id(adapter_id):  # a job's adapter at one step
                row = checkpoint_rows.get_checkpoint(session, tenant_id, adapter_id)
            elif model_names.parse(adapter_id) is not None:  # ft:<base>:<tenant>:<suffix>:<job>
                row = model_names.resolve(session, tenant_id, adapter_id)
            else:
                row = adapter_rows.get_adapter(session, tenant_id, adapter_id)
            if row is None:
                raise not_found("adapter", adapter_id)
            if isinstance(row, Adapter) and row.status == CORRUPT:
                raise corrupt(row.id)
            record = AdapterRecord.of(row)
        self.records.put((tenant_id, record.ref.adapter_id), record)
        return record

    def find_cached(self, tenant_id: str, adapter_id: str) -> AdapterRecord | None:
        return self.records.get((tenant_id, adapter_id))

    def forget(self, tenant_id: str, adapter_id: str) -> None:
        """This process deleted or condemned the adapter: stop answering from the cache."""
        self.records.pop((tenant_id, adapter_id))

    def condemn(self, tenant_id: str, adapter_id: str, reason: str) -> RequestError:
        """Mark the adapter corrupt (the engine or a download confirmed it) and return the
        error its request gets."""
        self.forget(tenant_id, adapter_id)
        with self.sessions() as session:
            adapter_rows.mark_corrupt(session, adapter_id)
            session.commit()
        return corrupt(adapter_id, reason)


def corrupt(adapter_id: str, reason: str = "") -> RequestError:
    detail = f" ({reason})" if reason else ""
    return RequestError(
        409,
        "adapter_corrupt",
        f"adapter {adapter_id!r} failed its integrity check and cannot be served{detail}; "
        "re-train or re-import it",
    )
