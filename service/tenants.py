"""Tenants and their API keys. Secrets are random, shown once, and stored only as sha256.

A key's public id is its row id; nothing of the secret is kept but its hash, which is also how
a presented secret is found. Generated secrets carry 256 random bits and configured ones must
be long (``MIN_CONFIGURED_KEY_CHARS``), so a fast hash leaves nothing to guess offline.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.ids import new_id
from service.tables import ApiKey, Tenant, utcnow
from service.vocabulary import KeyScope

LAST_USED_RESOLUTION = timedelta(minutes=1)  # avoids a write on every request
MIN_CONFIGURED_KEY_CHARS = 32


class WeakKey(ValueError):
    """A configured key too short to resist guessing."""


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_tenant(session: Session, name: str, *, operator: bool = False) -> Tenant:
    tenant = Tenant(id=new_id("ten"), name=name, created_at=utcnow(), operator=operator)
    session.add(tenant)
    session.flush()
    return tenant


def find_tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name).order_by(Tenant.id)).first()


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.id)))


def disable_tenant(session: Session, tenant_id: str) -> Tenant | None:
    """Its keys stop working at the next request; its data sets, jobs and adapters stay."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is not None and tenant.disabled_at is None:
        tenant.disabled_at = utcnow()
    return tenant


def _add_key(
    session: Session, tenant_id: str, secret: str, name: str | None, scope: KeyScope
) -> ApiKey:
    key = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        key_hash=hash_secret(secret),
        scope=KeyScope(scope).value,
        name=name,
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return key


def create_api_key(
    session: Session,
    tenant_id: str,
    name: str | None = None,
    scope: KeyScope = KeyScope.ADMIN,
) -> tuple[ApiKey, str]:
    """A new key for the tenant; the returned secret is the only copy that will ever exist."""
    secret = "ak_" + secrets.token_urlsafe(32)
    return _add_key(session, tenant_id, secret, name, scope), secret


def ensure_api_key(
    session: Session, secret: str, tenant_name: str = "default", name: str = "bootstrap"
) -> ApiKey:
    """Register a configured secret (ADALORA_API_KEY) as an admin key of the operator tenant
    ``tenant_name``, unless already known."""
    if len(secret) < MIN_CONFIGURED_KEY_CHARS:
        raise WeakKey(
            f"the configured API key has {len(secret)} characters; use at least "
            f"{MIN_CONFIGURED_KEY_CHARS} random ones (e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    known = select(ApiKey).where(ApiKey.key_hash == hash_secret(secret))
    existing = session.scalars(known).first()
    if existing is not None:
        return existing
    try:
        with session.begin_nested():
            tenant = find_tenant_by_name(session, tenant_name) or create_tenant(
                session, tenant_name, operator=True
            )
            return _add_key(session, tenant.id, secret, name, KeyScope.ADMIN)
    except IntegrityError:
        # Replicas starting together race to register the same key: the loser takes the
        # winner's (tests/reliability/test_two_replicas.py saw the loser's process exit).
        winner = session.scalars(known).first()
        if winner is None:
            raise
        return winner


def revoke_api_key(session: Session, key_id: str, tenant_id: str | None = None) -> ApiKey | None:
    key = session.get(ApiKey, key_id)
    if key is None or (tenant_id is not None and key.tenant_id != tenant_id):
        return None
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


def list_api_keys(session: Session, tenant_id: str | None = None) -> list[ApiKey]:
    stmt = select(ApiKey).order_by(ApiKey.id)
    if tenant_id is not None:
        stmt = stmt.where(ApiKey.tenant_id == tenant_id)
    return list(session.scalars(stmt))


def authenticate_key(session: Session, secret: str) -> ApiKey | None:
    """The live key matching ``secret`` (found by its hash; a unique index), or None for an
    unknown or revoked key or a disabled tenant."""
    if not secret:
        return None
    key = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_secret(secret))).first()
    if key is None or key.revoked_at is not None:
        return None
    tenant = session.get(Tenant, key.tenant_id)
    if tenant is None or tenant.disabled_at is not None:
        return None
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        key.last_used_at = now
        session.commit()
    return key


def authenticate(session: Session, secret: str) -> Tenant | None:
    key = authenticate_key(session, secret)
    return None if key is None else session.get(Tenant, key.tenant_id)
