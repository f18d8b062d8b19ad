"""First-start set-up for `adalora serve`: a tenant and an API key to reach it with."""

from __future__ import annotations

from sqlalchemy import select

from service.db import get_engine, session_scope
from service.settings import Settings
from service.tables import ApiKey
from service.tenants import create_api_key, create_tenant, ensure_api_key, find_tenant_by_name

DEFAULT_TENANT = "default"


def ensure_bootstrap_key(settings: Settings) -> str | None:
    """Register ADALORA_API_KEY if set; otherwise create a key on the very first start only.

    Returns a newly created secret (to print once), or None when nothing new was made.
    """
    with session_scope(get_engine(settings.database_url, settings.db_limits)) as session:
        if settings.api_key:
            ensure_api_key(session, settings.api_key, tenant_name=DEFAULT_TENANT)
            return None
        if session.scalars(select(ApiKey.id).limit(1)).first() is not None:
            return None
        tenant = find_tenant_by_name(session, DEFAULT_TENANT) or create_tenant(
            session, DEFAULT_TENANT, operator=True
        )
        _, secret = create_api_key(session, tenant.id, name="bootstrap")
        return secret
