"""A throw-away PostgreSQL database reached through a cuttable TCP proxy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_sessionmaker, upgrade_to_head
from tests.reliability.tcp_proxy import TcpProxy


@dataclass(frozen=True)
class ProxiedDatabase:
    direct_url: str  # for the test's own checks: never cut
    proxied_url: str  # for the code under test
    proxy: TcpProxy
    sessions: sessionmaker[Session]  # on direct_url


@pytest.fixture
def proxied_db(make_pg_database: Callable[[], str]) -> Iterator[ProxiedDatabase]:
    direct = make_pg_database()
    upgrade_to_head(direct)
    parsed = make_url(direct)
    engine = make_engine(direct)
    with TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432) as proxy:
        proxied = parsed.set(host="127.0.0.1", port=proxy.port)
        yield ProxiedDatabase(
            direct_url=direct,
            proxied_url=proxied.render_as_string(hide_password=False),
            proxy=proxy,
            sessions=make_sessionmaker(engine),
        )
    engine.dispose()
