"""API keys: shown once, stored as sha256, revocable; authentication is by exact secret."""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import tenants
from registry.models import ApiKey


def test_keys_are_stored_hashed_and_authenticate(db_session: Session) -> None:
    tenant = tenants.create_tenant(db_session, "acme")
    key, secret = tenants.create_api_key(db_session, tenant.id, "ci")
    db_session.commit()
    row = db_session.scalars(select(ApiKey)).one()
    assert row.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in (row.key_hash, row.prefix, row.name)
    assert secret.startswith(row.prefix)
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


def test_ensure_api_key_is_idempotent(db_session: Session) -> None:
    first = tenants.ensure_api_key(db_session, "bootstrap-secret-123")
    second = tenants.ensure_api_key(db_session, "bootstrap-secret-123")
    db_session.commit()
    assert first.id == second.id
    tenant = tenants.authenticate(db_session, "bootstrap-secret-123")
    assert tenant is not None and tenant.name == "default"
    assert len(tenants.list_api_keys(db_session, tenant.id)) == 1
