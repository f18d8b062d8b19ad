"""Alembic: empty -> head -> base on SQLite and PostgreSQL, and models == migrated schema."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.db import downgrade_to_base, make_engine, upgrade_to_head
from service.tables import Base

REPO = Path(__file__).resolve().parents[2]
TABLES = {"tenants", "api_keys", "datasets", "jobs", "job_events", "adapters", "checkpoints"}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def _round_trip(url: str) -> None:
    assert _tables(url) == set()
    upgrade_to_head(url)
    assert _tables(url) == TABLES
    assert _diff(url) == []
    upgrade_to_head(url)  # already at head: a no-op
    downgrade_to_base(url)
    assert _tables(url) == set()
    upgrade_to_head(url)
    assert _tables(url) == TABLES


def test_sqlite_up_down_and_no_drift(tmp_path: Path) -> None:
    _round_trip(f"sqlite:///{tmp_path / 'nested' / 'm.db'}")


def test_postgres_up_down_and_no_drift(make_pg_database: Callable[[], str]) -> None:
    _round_trip(make_pg_database())


def test_replicas_starting_together_migrate_once(
    make_pg_database: Callable[[], str], tmp_path: Path
) -> None:
    """Every `adalora serve` upgrades the schema at start; four starting at once on one fresh
    database all succeed (the second CREATE TABLE used to fail with a unique violation)."""
    from concurrent.futures import ThreadPoolExecutor

    for url in (make_pg_database(), f"sqlite:///{tmp_path / 'together.db'}"):
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(upgrade_to_head, [url] * 4))
        assert _tables(url) == TABLES


def test_alembic_command_line_uses_x_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    command = [sys.executable, "-m", "alembic", "-x", f"url={url}", "upgrade", "head"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert _tables(url) == TABLES


@pytest.mark.parametrize("db_backend", ["sqlite", "postgres"])
def test_fixture_databases_are_migrated(db_url: str) -> None:
    assert _tables(db_url) == TABLES


@pytest.mark.parametrize("db_backend", ["sqlite", "postgres"])
def test_jobs_stored_without_a_checkpoint_interval_get_the_one_the_worker_chose(
    make_pg_database: Callable[[], str], tmp_path: Path, db_backend: str
) -> None:
    """0005: the interval the worker used to choose at run time is filled into old jobs."""
    from alembic import command
    from sqlalchemy.orm import Session

    from service.db import alembic_config
    from service.jobs import create_job
    from service.tables import Job
    from service.tenants import create_tenant

    url = make_pg_database() if db_backend == "postgres" else f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0004_dataset_header")
    stored = {
        "unset": {"total_steps": 60, "training": {"max_steps": 60, "checkpoint_every": None}},
        "absent": {"total_steps": 25, "training": {"max_steps": 25}, "chosen_by_service": []},
        "given": {"total_steps": 60, "training": {"max_steps": 60, "checkpoint_every": 7}},
        "one_update": {"total_steps": 1, "training": {"max_steps": 1, "checkpoint_every": None}},
        "no_training": {"total_steps": 30},
    }
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            tenant = create_tenant(session, "old")
            ids = {
                name: create_job(
                    session,
                    tenant_id=tenant.id,
                    base_model="tiny",
                    task="classification",
                    dataset_id=None,  # type: ignore[arg-type]
                    validation_dataset_id=None,
                    request={},
                    hyperparameters=hyper,
                    request_hash=name,
                ).id
                for name, hyper in stored.items()
            }
            session.commit()
        upgrade_to_head(url)
        with Session(engine) as session:
            found = {name: session.get(Job, job_id).hyperparameters for name, job_id in ids.items()}
    finally:
        engine.dispose()
    assert found["unset"]["training"]["checkpoint_every"] == 6
    assert found["absent"]["training"] == {"max_steps": 25, "checkpoint_every": 3}
    assert found["absent"]["chosen_by_service"] == ["training.checkpoint_every"]
    assert found["given"] == stored["given"]
    assert found["one_update"] == stored["one_update"]  # a run of one update never checkpointed
    assert found["no_training"] == stored["no_training"]


@pytest.mark.parametrize("db_backend", ["sqlite", "postgres"])
def test_adapters_sharing_a_name_keep_it_once_and_all_are_trained(
    make_pg_database: Callable[[], str], tmp_path: Path, db_backend: str
) -> None:
    """0008: names become unique per tenant; the oldest of a shared name keeps it."""
    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from service.db import alembic_config
    from service.tenants import create_tenant

    url = make_pg_database() if db_backend == "postgres" else f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0007_job_tracking")
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            tenants = [create_tenant(session, "a").id, create_tenant(session, "b").id]
            session.commit()
        rows = [("ad_1", 0, "demo"), ("ad_2", 0, "demo"), ("ad_3", 1, "demo"), ("ad_4", 0, None)]
        with engine.begin() as connection:
            for adapter_id, tenant, name in rows:
                connection.execute(
                    text(
                        "INSERT INTO adapters (id, tenant_id, name, base_model, task, init_r,"
                        " target_r, total_rank, trainable_params, size_bytes, sha256, formats,"
                        " metrics, rank_info, status, created_at) VALUES (:id, :tenant, :name,"
                        " 'tiny', 'classification', 4, 2, 8, 10, 1, 'x', '{}', '{}', '{}',"
                        " 'ready', CURRENT_TIMESTAMP)"
                    ),
                    {"id": adapter_id, "tenant": tenants[tenant], "name": name},
                )
        upgrade_to_head(url)
        with engine.connect() as connection:
            found = connection.execute(
                text("SELECT id, name, source FROM adapters ORDER BY id")
            ).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in found] == [
        ("ad_1", "demo", "train"),
        ("ad_2", "demo-ad_2", "train"),
        ("ad_3", "demo", "train"),
        ("ad_4", None, "train"),
    ]
