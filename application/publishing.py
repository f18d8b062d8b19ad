"""Publishing an adapter: a finished adapter bundle becomes artifacts in the store and the
adapter row that points at them. Written once for the worker (the end of a job), the test
fixtures and the benchmarks that need stored adapters.

The order is the worker's guarantee: every artifact is in the store before a row names it
(:func:`store_artifacts`), the row goes in with the caller's own transaction
(:func:`add_adapter_row`; the worker commits it with the job's success), and artifacts that no
row will point at are deleted (:func:`discard_artifacts`). :func:`publish_adapter` does all of
it for callers with nothing else to commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from adalora_core.tasks import TaskSpec
from service import adapters as adapter_rows
from service.ids import new_id
from service.store import adapter_key
from service.store.base import ArtifactStore, StoreError
from service.tables import Adapter
from service.vocabulary import ArtifactFormat

if TYPE_CHECKING:
    from adalora_core.formats.bundle import AdapterWeights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredArtifacts:
    """An adapter's artifacts in the store, before any row points at them."""

    adapter_id: str
    weights: AdapterWeights
    # format -> {"storage_key", "sha256", "size_bytes"}, as the adapter row stores it
    formats: dict[str, dict[str, Any]]


def store_artifacts(
    store: ArtifactStore,
    tenant_id: str,
    bundle_dir: Path,
    work_dir: Path,
    *,
    merged_base: str | None = None,
) -> StoredArtifacts:
    """Zip the bundle (PEFT format), export it as a plain LoRA adapter and, given
    ``merged_base`` (the base model's directory), merge it into the base; put each archive in
    the store under a new adapter id. Nothing stays in the store if this raises."""
    from adalora_core.formats.bundle import read_adapter

    weights = read_adapter(bundle_dir)
    wanted = [ArtifactFormat.PEFT, ArtifactFormat.LORA]
    if merged_base is not None:
        wanted.append(ArtifactFormat.MERGED)
    archives = build_archives(bundle_dir, weights, work_dir, wanted, merged_base)
    adapter_id = new_id("ad")
    formats: dict[str, dict[str, Any]] = {}
    try:
        for name, archive in archives.items():
            key = adapter_key(tenant_id, adapter_id, name)
            sha256, size = store.put_file(key, archive)
            formats[name] = {"storage_key": key, "sha256": sha256, "size_bytes": size}
    except BaseException:
        discard_artifacts(store, formats)
        raise
    return StoredArtifacts(adapter_id, weights, formats)


def build_archives(
    bundle_dir: Path,
    weights: AdapterWeights,
    work_dir: Path,
    formats: list[ArtifactFormat],
    merged_base: str | None = None,
) -> dict[ArtifactFormat, Path]:
    """Each asked format of a bundle as a zip in ``work_dir``: the bundle itself (PEFT), a plain
    LoRA export, or the adapter merged into ``merged_base`` (the base model's directory)."""
    from adalora_core.formats.bundle import zip_bundle
    from adalora_core.formats.lora import export_lora
    from adalora_core.formats.merged import save_merged

    work_dir.mkdir(parents=True, exist_ok=True)
    archives: dict[ArtifactFormat, Path] = {}
    for fmt in formats:
        if fmt == ArtifactFormat.PEFT:
            source = Path(bundle_dir)
        elif fmt == ArtifactFormat.LORA:
            source = export_lora(weights, work_dir / "lora")
        else:
            assert merged_base is not None, "a merged export needs the base model"
            task = TaskSpec.from_json(weights.meta.task)
            source = save_merged(merged_base, weights, work_dir / "merged", task)
        archive = zip_bundle(source, work_dir / f"{fmt}.zip")
        assert isinstance(archive, Path)
        archives[fmt] = archive
    return archives


def add_adapter_row(
    session: Session,
    stored: StoredArtifacts,
    *,
    tenant_id: str,
    base_model: str,
    job_id: str | None = None,
    name: str | None = None,
    source: str = "train",
    idempotency: tuple[str, str] | None = None,
) -> Adapter:
    """The adapter row for stored artifacts, its rank pattern and metrics from the bundle's
    metadata; flushed, not committed (the caller's transaction decides)."""
    meta, weights = stored.weights.meta, stored.weights
    return adapter_rows.create_adapter(
        session,
        adapter_id=stored.adapter_id,
        tenant_id=tenant_id,
        job_id=job_id,
        name=name,
        base_model=base_model,
        task=meta.task["kind"],
        labels=list(meta.labels) if meta.labels else None,
        init_r=meta.init_r,
        target_r=meta.target_r,
        total_rank=weights.total_rank,
        trainable_params=meta.trainable_params,
        formats=stored.formats,
        rank_info={
            "budget": dict(meta.budget),
            "modules": [dict(m) for m in meta.modules],
            "history": list(meta.history),
        },
        metrics=dict(meta.metrics),
        source=source,
        idempotency=idempotency,
    )


def discard_artifacts(store: ArtifactStore, formats: dict[str, dict[str, Any]]) -> None:
    """Delete artifacts no adapter row will point at (a failure here is logged: the store's
    garbage collection finds what is left)."""
    for info in formats.values():
        try:
            store.delete(info["storage_key"])
        except StoreError:
            log.warning("could not delete orphaned artifact %s", info["storage_key"])


def publish_adapter(
    session: Session,
    store: ArtifactStore,
    tenant_id: str,
    bundle_dir: Path,
    work_dir: Path,
    *,
    base_model: str,
    name: str | None = None,
) -> str:
    """Store a bundle's artifacts and commit its adapter row, outside any job; the adapter id."""
    stored = store_artifacts(store, tenant_id, bundle_dir, work_dir)
    try:
        add_adapter_row(session, stored, tenant_id=tenant_id, base_model=base_model, name=name)
        session.commit()
    except BaseException:
        session.rollback()
        discard_artifacts(store, stored.formats)
        raise
    return stored.adapter_id


def remove_adapter(
    session: Session, store: ArtifactStore, forget: Callable[[str, str], None], adapter: Adapter
) -> None:
    """Publishing undone: the row goes (committed), this process forgets the adapter
    (``forget(tenant_id, adapter_id)``: its record and its weights), then its files go (a file
    left behind is harmless: the row that named it is gone)."""
    tenant_id, adapter_id = adapter.tenant_id, adapter.id
    keys = adapter_rows.delete_adapter(session, adapter)
    session.commit()
    forget(tenant_id, adapter_id)
    for key in keys:
        try:
            store.delete(key)
        except Exception:
            log.warning("could not delete %s from the store", key, exc_info=True)
