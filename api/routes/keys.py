"""API keys of the caller's tenant (admin keys only); a secret is returned once, at creation.

A key never hands out or takes away more power than its own: it cannot create or revoke a key
of a scope above its own.
"""

from __future__ import annotations

from fastapi import APIRouter, Body, Request, Response

from api.deps import AdminCaller, SessionDep
from api.errors import responses
from api.schemas import KeyCreate, KeyCreated, KeyList, KeyOut
from application.errors import RequestError, not_found
from service import tenants
from service.tables import ApiKey
from service.vocabulary import KeyScope, scope_allows

router = APIRouter(tags=["keys"])


def key_out(key: ApiKey) -> KeyOut:
    return KeyOut(
        id=key.id,
        scope=KeyScope(key.scope),
        name=key.name,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
    )


def _beyond(caller_scope: KeyScope, scope: str) -> RequestError:
    return RequestError(
        403,
        "forbidden",
        f"a {caller_scope.value!r} key cannot manage a {scope!r} key",
        "scope",
    )


@router.post(
    "/keys", status_code=201, response_model=KeyCreated, responses=responses(400, 401, 403, 422)
)
def create_key(
    caller: AdminCaller, session: SessionDep, body: KeyCreate = Body(default_factory=KeyCreate)
) -> KeyCreated:
    if not scope_allows(caller.scope, body.scope):
        raise _beyond(caller.scope, body.scope)
    key, secret = tenants.create_api_key(session, caller.tenant_id, body.name, body.scope)
    session.commit()
    return KeyCreated(**key_out(key).model_dump(), key=secret)


@router.get("/keys", response_model=KeyList, responses=responses(401, 403))
def list_keys(caller: AdminCaller, session: SessionDep) -> KeyList:
    return KeyList(items=[key_out(k) for k in tenants.list_api_keys(session, caller.tenant_id)])


@router.delete("/keys/{key_id}", status_code=204, responses=responses(401, 403, 404))
def revoke_key(key_id: str, request: Request, caller: AdminCaller, session: SessionDep) -> Response:
    key = session.get(ApiKey, key_id)
    if key is None or key.tenant_id != caller.tenant_id:
        raise not_found("key", key_id)
    if not scope_allows(caller.scope, KeyScope(key.scope)):
        raise _beyond(caller.scope, key.scope)
    tenants.revoke_api_key(session, key_id, caller.tenant_id)
    session.commit()
    request.app.state.key_cache.clear()  # it is keyed by secret, which we do not hold
    return Response(status_code=204)
