"""Request dependencies as ``Annotated`` aliases: settings, DB session, store, queue producer,
the serving side (engine, batcher, admission), caller, limits."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.ratelimit import RateLimiter
from application.engine_factory import Serving
from application.errors import RequestError, retry_after
from application.ttl_cache import TtlCache
from service import tenants
from service.queue import TaskProducer
from service.settings import Settings
from service.store import ArtifactStore
from service.tables import Tenant
from service.vocabulary import KeyScope, scope_allows

_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}  # RFC 6750: every 401 names the scheme
bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.close()


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


async def get_producer(request: Request) -> TaskProducer:
    return request.app.state.producer


async def get_serving(request: Request) -> Serving:
    serving = getattr(request.app.state, "serving", None)
    if serving is None:
        raise RequestError(503, "engine_unavailable", "inference engine not available")
    return serving


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
ProducerDep = Annotated[TaskProducer, Depends(get_producer)]
ServingDep = Annotated[Serving, Depends(get_serving)]

# One page of a cursor-paginated list, the same bounds on every list route.
PageLimit = Annotated[int, Query(ge=1, le=200)]
PageCursor = Annotated[str | None, Query(max_length=64)]
# Uploads and submissions replay an earlier identical call under the same key.
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
]


@dataclass(frozen=True)
class Caller:
    """The authenticated caller: everything it touches is scoped to ``tenant_id``, and it may
    do what ``scope`` allows."""

    tenant_id: str
    key_id: str
    scope: KeyScope
    operator: bool = False


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """A key seen in the last ``lookup_cache_ttl_s`` is answered on the event loop; only a miss
    reads SQL, in a worker thread. Every authenticated request passes here, and each hand-off to
    a thread costs the event loop as much as the lookup it saves (docs/benchmarks.md)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise RequestError(
            401,
            "unauthorized",
            "missing API key (Authorization: Bearer <key>)",
            None,
            _UNAUTHORIZED,
        )
    cache: TtlCache[str, Caller] = request.app.state.key_cache
    key_hash = tenants.hash_secret(credentials.credentials)
    known = cache.get(key_hash)
    if known is not None:
        return known
    caller = await run_in_threadpool(_authenticate, request, credentials.credentials)
    cache.put(key_hash, caller)  # only keys that passed: a wrong key always costs a query
    return caller


def _authenticate(request: Request, secret: str) -> Caller:
    with request.app.state.sessions() as session:
        key = tenants.authenticate_key(session, secret)
        if key is not None:
            tenant = session.get(Tenant, key.tenant_id)
            return Caller(
                tenant_id=key.tenant_id,
                key_id=key.id,
                scope=KeyScope(key.scope),
                operator=bool(tenant is not None and tenant.operator),
            )
    # Every wrong key costs its client address a token: guessing is slowed to a trickle.
    limiter: RateLimiter = request.app.state.rate_limits["auth_failures"]
    wait = limiter.acquire(request.client.host if request.client else "unknown")
    if wait > 0:
        raise RequestError(
            429,
            "rate_limited",
            f"too many failed authentications from this address; retry in {wait:.0f}s",
            None,
            retry_after(wait),
        )
    raise RequestError(401, "unauthorized", "invalid or revoked API key", None, _UNAUTHORIZED)


def _scoped(needed: KeyScope, *, operator: bool = False):
    async def check(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
        if not scope_allows(caller.scope, needed):
            raise RequestError(
                403,
                "forbidden",
                f"this key's scope is {caller.scope.value!r}; this needs {needed.value!r}",
            )
        if operator and not caller.operator:
            raise RequestError(
                403, "forbidden", "only the operator tenant's admin keys manage tenants"
            )
        return caller

    return check


# Every authenticated route takes one of these: the key, checked for the scope it needs.
CallerDep = Annotated[Caller, Depends(_scoped(KeyScope.INFER))]
TrainCaller = Annotated[Caller, Depends(_scoped(KeyScope.TRAIN))]
AdminCaller = Annotated[Caller, Depends(_scoped(KeyScope.ADMIN))]
OperatorCaller = Annotated[Caller, Depends(_scoped(KeyScope.ADMIN, operator=True))]


async def take_budget(request: Request, name: str, key: str, cost: float, what: str) -> None:
    """Take ``cost`` from the named token bucket of ``key``, or refuse with 429 Retry-After."""
    buckets: RateLimiter = request.app.state.rate_limits[name]
    if buckets.blocking:
        wait = await run_in_threadpool(buckets.acquire, key, cost)
    else:
        wait = buckets.acquire(key, cost)
    if wait > 0:
        raise RequestError(
            429,
            "rate_limited",
            f"too many {what} for this key; retry in {wait:.1f}s",
            None,
            retry_after(wait),
        )


def _limit(name: str, needed: KeyScope):
    scoped = _scoped(needed)

    # A default-value Depends: an annotation naming the local ``scoped`` could not be resolved
    # by FastAPI (this module's annotations are strings).
    async def check(request: Request, caller: Caller = Depends(scoped)) -> Caller:
        await take_budget(request, name, caller.key_id, 1, f"{name} requests")
        return caller

    return check


# Use these instead of CallerDep on rate-limited routes (they authenticate too).
JobsLimitedCaller = Annotated[Caller, Depends(_limit("jobs", KeyScope.TRAIN))]
InferLimitedCaller = Annotated[Caller, Depends(_limit("infer", KeyScope.INFER))]


@dataclass(frozen=True)
class Metered:
    """An inference caller past the request-rate limit, and the row budget its request is
    charged against once admitted: a request of 300 prompts × n=8 costs 2,400 rows, not one."""

    caller: Caller
    request: Request

    @property
    def tenant_id(self) -> str:
        return self.caller.tenant_id

    async def charge_rows(self, rows: int) -> None:
        await take_budget(self.request, "infer_rows", self.caller.key_id, rows, "rows")


async def get_metered(request: Request, caller: InferLimitedCaller) -> Metered:
    return Metered(caller, request)


MeteredCaller = Annotated[Metered, Depends(get_metered)]


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def reject_unknown_query(request: Request) -> None:
    """A misspelled query parameter (``?stauts=``) is an error, not silently ignored."""
    route = request.scope.get("route")
    if route is None or not request.query_params:
        return
    known = _query_names(route.dependant)
    for name in request.query_params:
        if name not in known:
            expected = ", ".join(sorted(known)) or "none"
            raise RequestError(
                422, "validation_error", f"unknown query parameter (expected: {expected})", name
            )
