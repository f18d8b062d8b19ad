"""Fixtures shared by the reliability tests: the API suite's helpers, plus a snapshot of
everything the service has stored (row counts of every table and every file in the store), so
a test can prove that a rejected request changed nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings
from service.tables import Base
from tests.api.conftest import dataset, make_adapter, store_bundle, upload  # noqa: F401  (fixtures)
from tests.api.test_infer import stored_adapter, tiny_base  # noqa: F401  (fixtures)
from tests.reliability.proxied_db import proxied_db  # noqa: F401  (fixture)


def stored_state(sessions: sessionmaker[Session], settings: Settings) -> dict[str, Any]:
    """Row counts per table, the store's files with their digests, and leftover staging files."""
    with sessions() as session:
        counts = {
            table.name: int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in Base.metadata.sorted_tables
        }
    store_root = Path(settings.store_dir or "")
    files = {
        str(path.relative_to(store_root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(store_root.rglob("*"))
        if path.is_file()
    }
    staging = Path(settings.home) / "uploads"
    leftovers = sorted(p.name for p in staging.glob("*")) if staging.exists() else []
    return {"rows": counts, "files": files, "staging": leftovers}


@pytest.fixture
def snapshot(sessions: sessionmaker[Session], settings: Settings) -> Any:
    """snapshot() -> the stored state now (see ``stored_state``)."""
    return lambda: stored_state(sessions, settings)
