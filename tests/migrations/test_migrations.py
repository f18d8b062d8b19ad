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
TABLES = {"tenants", "api_keys", "datasets", "jobs", "job_events", "adapters"}


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
