"""Publishing an adapter bundle: its artifacts in the store first, then its row; on a failed
row nothing stays behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from adalora_core.formats.bundle import read_adapter, write_bundle
from application.publishing import publish_adapter
from service.tables import Adapter
from service.tenants import create_tenant
from tests.serving.tiny_serving import bert_layer_paths, make_adapter


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    layer = bert_layer_paths(0)
    weights = make_adapter(
        "tiny-bert", "classification", {layer["q"]: 3, layer["v"]: 1}, seed=4, labels=["neg", "pos"]
    )
    return write_bundle(weights, tmp_path / "bundle")


def test_the_artifacts_and_the_row_describe_the_bundle(
    sessions: sessionmaker[Session], store: Any, bundle: Path, tmp_path: Path
) -> None:
    with sessions() as session:
        tenant_id = create_tenant(session, "t").id
        session.commit()
        adapter_id = publish_adapter(
            session, store, tenant_id, bundle, tmp_path / "work", base_model="tiny", name="a"
        )
    with sessions() as session:
        row = session.get(Adapter, adapter_id)
        assert row is not None and row.name == "a" and row.job_id is None
        assert sorted(row.formats) == ["lora", "peft"] and row.status == "ready"
        assert row.sha256 == row.formats["peft"]["sha256"]
        weights = read_adapter(store.open_read(row.formats["peft"]["storage_key"], row.sha256))
        assert row.total_rank == weights.total_rank == 4 and row.labels == ["neg", "pos"]
        assert row.rank_info["modules"] == weights.meta.modules
        for info in row.formats.values():
            assert store.exists(info["storage_key"])


def test_a_row_that_cannot_be_written_leaves_no_artifact(
    sessions: sessionmaker[Session],
    store: Any,
    bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_insert(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr("service.adapters.create_adapter", broken_insert)
    with sessions() as session:
        tenant_id = create_tenant(session, "t").id
        session.commit()
        with pytest.raises(RuntimeError, match="went away"):
            publish_adapter(session, store, tenant_id, bundle, tmp_path / "work", base_model="m")
    with sessions() as session:
        assert session.scalars(select(Adapter)).all() == []
    assert list(store.list_objects("adapters/")) == []
