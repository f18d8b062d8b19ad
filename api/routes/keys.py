"""API keys of the caller's tenant; a secret is returned once, at creation."""

from __future__ import annotations

from fastapi import APIRouter, Body, Response

from api.deps import CallerDep, SessionDep
from api.errors import not_found, responses
from api.schemas import KeyCreate, KeyCreated, KeyList, KeyOut
from registry import tenants
from registry.models import ApiKey

router = APIRouter(tags=["keys"])


def key_out(key: ApiKey) -> KeyOut:
    return KeyOut(
        id=key.id,
        prefix=key.prefix,
        name=key.name,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
    )


@router.post(
    "/keys", status_code=201, response_model=KeyCreated, responses=responses(400, 401, 422)
)
def create_key(
    caller: CallerDep, session: SessionDep, body: KeyCreate = Body(default_factory=KeyCreate)
) -> KeyCreated:
    key, secret = tenants.create_api_key(session, caller.tenant_id, body.name)
    session.commit()
    return KeyCreated(**key_out(key).model_dump(), key=secret)


@router.get("/keys", response_model=KeyList, responses=responses(401))
def list_keys(caller: CallerDep, session: SessionDep) -> KeyList:
    return KeyList(items=[key_out(k) for k in tenants.list_api_keys(session, caller.tenant_id)])


@router.delete("/keys/{key_id}", status_code=204, responses=responses(401, 404))
def revoke_key(key_id: str, caller: CallerDep, session: SessionDep) -> Response:
    if tenants.revoke_api_key(session, key_id, caller.tenant_id) is None:
        raise not_found("key", key_id)
    session.commit()
    return Response(status_code=204)
