"""Tenants, for the operator: create one (with its first admin key), list them, disable one.

Only admin keys of the operator tenant (the one `adalora serve` bootstraps) reach these
routes. A disabled tenant's keys stop working at once; its data stays.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import OperatorCaller, SessionDep
from api.errors import responses
from api.schemas import TenantCreate, TenantCreated, TenantList, TenantOut
from application.errors import RequestError, not_found
from service import tenants
from service.tables import Tenant
from service.vocabulary import KeyScope

router = APIRouter(tags=["tenants"])


def tenant_out(tenant: Tenant) -> TenantOut:
    return TenantOut(
        id=tenant.id,
        name=tenant.name,
        operator=tenant.operator,
        created_at=tenant.created_at,
        disabled_at=tenant.disabled_at,
    )


@router.post(
    "/tenants", status_code=201, response_model=TenantCreated, responses=responses(401, 403, 422)
)
def create_tenant(body: TenantCreate, caller: OperatorCaller, session: SessionDep) -> TenantCreated:
    tenant = tenants.create_tenant(session, body.name)
    key, secret = tenants.create_api_key(session, tenant.id, "first key", KeyScope.ADMIN)
    session.commit()
    return TenantCreated(**tenant_out(tenant).model_dump(), key=secret, key_id=key.id)


@router.get("/tenants", response_model=TenantList, responses=responses(401, 403))
def list_tenants(caller: OperatorCaller, session: SessionDep) -> TenantList:
    return TenantList(items=[tenant_out(t) for t in tenants.list_tenants(session)])


@router.post(
    "/tenants/{tenant_id}/disable",
    response_model=TenantOut,
    responses=responses(401, 403, 404, 409),
)
def disable_tenant(
    tenant_id: str, request: Request, caller: OperatorCaller, session: SessionDep
) -> TenantOut:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise not_found("tenant", tenant_id)
    if tenant.operator:
        raise RequestError(409, "conflict", "the operator tenant cannot be disabled")
    tenants.disable_tenant(session, tenant_id)
    session.commit()
    request.app.state.key_cache.clear()
    return tenant_out(tenant)
