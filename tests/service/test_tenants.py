"""API keys: shown once, stored as sha256, revocable; authentication is by exact secret."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import tenants
from service.tables import ApiKey


def test_keys_are_stored_hashed_and_authenticate(db_session: Session) -> None:
    tenant = tenants.create_tenant(db_session, "acme")
    key, secret = tenants.create_api_key(db_session, tenant.id, "ci")
    db_session.commit()
    row = db_session.scalars(select(ApiKey)).one()
    assert row.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in (row.key_hash, row.name, row.id)
    assert not any(secret[:8] in str(v) for v in (row.key_hash, row.id, row.name))
    assert row.scope == "admin"
    authed = tenants.authenticate(db_session, secret)
    assert authed is not None and authed.id == tenant.id
    assert row.last_used_at is not None


def test_wrong_or_revoked_key_fails(db_session: Session) -> None:
    tenant = tenants.create_tenant(db_session, "acme")
    key, secret = tenants.create_api_key(db_session, tenant.id)
    other, other_secret = tenants.create_api_key(db_session, tenant.id)
    db_session.commit()
    assert (
        tenants.authenticate(db_session, secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    )
    assert tenants.authenticate(db_session, "") is None
    assert tenants.revoke_api_key(db_session, key.id, tenant_id="someone-else") is None
    assert tenants.revoke_api_key(db_session, key.id, tenant_id=tenant.id) is not None
    db_session.commit()
    assert tenants.authenticate(db_session, secret) is None
    assert tenants.authenticate(db_session, other_secret) is not None


BOOTSTRAP = "bootstrap-secret-0123456789-abcdefghij"


def test_ensure_api_key_is_idempotent_and_admin_of_the_operator_tenant(db_session: Session) -> None:
    first = tenants.ensure_api_key(db_session, BOOTSTRAP)
    second = tenants.ensure_api_key(db_session, BOOTSTRAP)
    db_session.commit()
    assert first.id == second.id and first.scope == "admin"
    tenant = tenants.authenticate(db_session, BOOTSTRAP)
    assert tenant is not None and tenant.name == "default" and tenant.operator
    assert len(tenants.list_api_keys(db_session, tenant.id)) == 1


def test_a_short_configured_key_is_refused(db_session: Session) -> None:
    with pytest.raises(tenants.WeakKey, match="at least 32"):
        tenants.ensure_api_key(db_session, "changeme")
    assert tenants.list_api_keys(db_session) == []


def test_a_disabled_tenants_keys_stop_at_once_and_its_rows_stay(db_session: Session) -> None:
    tenant = tenants.create_tenant(db_session, "acme")
    _, secret = tenants.create_api_key(db_session, tenant.id)
    db_session.commit()
    assert tenants.authenticate(db_session, secret) is not None
    tenants.disable_tenant(db_session, tenant.id)
    db_session.commit()
    assert tenants.authenticate(db_session, secret) is None
    assert [t.id for t in tenants.list_tenants(db_session)] == [tenant.id]
    assert len(tenants.list_api_keys(db_session, tenant.id)) == 1


@pytest.mark.parametrize("db_backend", ["postgres"])  # replicas share a server database
def test_replicas_registering_the_configured_key_at_once_both_start(sessions) -> None:
    """Two API replicas starting together both register ADALORA_API_KEY: one inserts it, the
    other finds it (before, the loser's unique-key violation stopped its process)."""
    import threading

    from sqlalchemy import select

    from service.tables import ApiKey

    secret = "k" * 40
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def register() -> None:
        with sessions() as session:
            session.scalars(select(ApiKey.id)).all()  # both look before either inserts
            start.wait()
            try:
                outcomes.append(tenants.ensure_api_key(session, secret).id)
                session.commit()
            except Exception as exc:  # the failure the test is about
                outcomes.append(exc)

    threads = [threading.Thread(target=register) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(isinstance(o, str) for o in outcomes), outcomes
    assert len(set(outcomes)) == 1
    with sessions() as session:
        assert len(session.scalars(select(ApiKey)).all()) == 1
