"""Tenants and their API keys. Secrets are random, shown once, and stored only as sha256."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.ids import new_id
from registry.models import ApiKey, Tenant, utcnow

KEY_PREFIX_CHARS = 12
LAST_USED_RESOLUTION = timedelta(minutes=1)  # avoids a write on every request


def hash_secret(secret: str) -> str:
    # Keys are 256-bit random tokens, so a fast hash is enough (no dictionary to attack).
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_tenant(session: Session, name: str) -> Tenant:
    tenant = Tenant(id=new_id("ten"), name=name, created_at=utcnow())
    session.add(tenant)
    session.flush()
    return tenant


def find_tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name).order_by(Tenant.id)).first()


def _add_key(session: Session, tenant_id: str, secret: str, name: str | None) -> ApiKey:
    key = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        prefix=secret[:KEY_PREFIX_CHARS],
        key_hash=hash_secret(secret),
        name=name,
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return key


def create_api_key(session: Session, tenant_id: str, name: str | None = None) -> tuple[ApiKey, str]:
    """A new key for the tenant; the returned secret is the only copy that will ever exist."""
    secret = "ak_" + secrets.token_urlsafe(32)
    return _add_key(session, tenant_id, secret, name), secret


def ensure_api_key(
    session: Session, secret: str, tenant_name: str = "default", name: str = "bootstrap"
) -> ApiKey:
    """Register a configured secret (ADALORA_API_KEY) for ``tenant_name`` unless already known."""
    existing = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_secret(secret))).first()
    if existing is not None:
        return existing
    tenant = find_tenant_by_name(session, tenant_name) or create_tenant(session, tenant_name)
    return _add_key(session, tenant.id, secret, name)


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
    """The live key matching ``secret`` (constant-time hash comparison), or None."""
    if not secret:
        return None
    wanted = hash_secret(secret)
    candidates = session.scalars(
        select(ApiKey).where(ApiKey.prefix == secret[:KEY_PREFIX_CHARS])
    ).all()
    match = None
    for key in candidates:
        if hmac.compare_digest(key.key_hash, wanted):
            match = key
    if match is None or match.revoked_at is not None:
        return None
    now = utcnow()
    if match.last_used_at is None or now - match.last_used_at > LAST_USED_RESOLUTION:
        match.last_used_at = now
        session.commit()
    return match


def authenticate(session: Session, secret: str) -> Tenant | None:
    key = authenticate_key(session, secret)
    return None if key is None else session.get(Tenant, key.tenant_id)
