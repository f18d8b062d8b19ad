"""Liveness, readiness (database + broker) and Prometheus metrics.

Health needs no key. Metrics cover every tenant, so they need ``ADALORA_METRICS_TOKEN`` as a
bearer token, or, with no token configured, a client on the loopback interface.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.errors import error_response, responses
from api.schemas import Health, Readiness
from application.errors import RequestError

router = APIRouter(tags=["health"])

LOOPBACK = frozenset({"127.0.0.1", "::1"})


def _check_metrics_access(request: Request) -> None:
    token = request.app.state.settings.metrics_token
    if token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise RequestError(
                401, "unauthorized", "metrics need the metrics token as a bearer token"
            )
        return
    client = request.client.host if request.client else ""
    if client not in LOOPBACK:
        raise RequestError(
            403,
            "forbidden",
            "metrics are served to loopback clients only; set ADALORA_METRICS_TOKEN to scrape "
            "them from elsewhere",
        )


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


def _check_database(request: Request) -> str:
    try:
        with request.app.state.sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        return f"unreachable ({exc.__class__.__name__})"
    return "ok"


def _check_broker(request: Request) -> str:
    try:
        request.app.state.producer.ping(timeout=2.0)
    except Exception as exc:
        return f"unreachable ({exc.__class__.__name__})"
    return "ok"


@router.get("/readyz", response_model=Readiness, responses=responses(503))
async def readyz(request: Request) -> Readiness | Response:
    checks = {
        "database": await run_in_threadpool(_check_database, request),
        "broker": await run_in_threadpool(_check_broker, request),
    }
    if all(value == "ok" for value in checks.values()):
        serving = getattr(request.app.state, "serving", None)
        engine = None if serving is None else serving.engine
        return Readiness(
            status="ready",
            checks=checks,
            device=None if engine is None else str(engine.device),
            dtype=None if engine is None else str(engine.dtype).removeprefix("torch."),
        )
    failing = "; ".join(f"{name}: {value}" for name, value in checks.items() if value != "ok")
    return error_response(503, "not_ready", f"not ready: {failing}")


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        **responses(401, 403),
    },
)
def metrics(request: Request) -> Response:
    _check_metrics_access(request)
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
