"""Engine and sessions from settings, and schema upgrades through Alembic (never create_all)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 15_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


@dataclass(frozen=True)
class DbLimits:
    """Bounds on waiting for the database, so a database that hangs gives errors, not hung
    requests (0 turns a timeout off: migrations run without a statement timeout), and the size
    of the connection pool."""

    connect_s: float = 5.0  # a new connection that gets no answer (PostgreSQL)
    statement_s: float = 30.0  # one statement on the server (PostgreSQL)
    pool_s: float = 10.0  # waiting for a free pooled connection (always on)
    pool_size: int = 5
    max_overflow: int = 10


def make_engine(url: str, limits: DbLimits = DbLimits()) -> Engine:
    """A new engine; SQLite gets WAL, foreign keys and a busy timeout so threads can share it."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if limits.connect_s:
        connect_args["connect_timeout"] = max(1, math.ceil(limits.connect_s))
    if limits.statement_s:
        connect_args["options"] = f"-c statement_timeout={int(limits.statement_s * 1000)}"
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_timeout=limits.pool_s,
        pool_size=limits.pool_size,
        max_overflow=limits.max_overflow,
        connect_args=connect_args,
    )


@lru_cache(maxsize=8)
def get_engine(url: str, limits: DbLimits = DbLimits()) -> Engine:
    """One shared engine per URL (and limits) in this process."""
    return make_engine(url, limits)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error (for workers and scripts)."""
    session = make_sessionmaker(engine)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Any:
    """Alembic config pointing at our migrations, independent of the current directory."""
    from alembic.config import Config

    ini = MIGRATIONS_DIR.parent / "alembic.ini"
    config = Config(str(ini)) if ini.exists() else Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["skip_logging_config"] = True  # keep the host process's logging
    return config


def upgrade_to_head(url: str) -> None:
    """Bring the database at ``url`` to the newest schema revision. Replicas starting together
    each call this: a lock makes one migrate while the others wait, then find it done."""
    from alembic import command

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    with _migration_lock(url):
        command.upgrade(alembic_config(url), "head")


# Any fixed number: the key of the PostgreSQL advisory lock that serializes migrations.
MIGRATION_LOCK_KEY = 0x4164614C6F5241  # "AdaLoRA"


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(
                    text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
                try:
                    yield
                finally:
                    connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
        finally:
            engine.dispose()
    elif parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        import fcntl

        with open(f"{parsed.database}.migrate.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    else:
        yield


def downgrade_to_base(url: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), "base")
