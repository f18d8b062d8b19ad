"""The app factory. ``create_app(settings)`` wires settings, DB sessions, the artifact store, the
queue producer, rate limits, metrics and every router; ``uvicorn --factory api.main:create_app``.

The lifespan starts the serving side (`application.engine_factory.start_serving`: engine,
batcher, adapter directory, admission) on ``app.state.serving`` and closes it at shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.responses import RedirectResponse

from api.bodylimit import BodySizeLimitMiddleware
from api.console_files import CONSOLE_PATH, console_app
from api.deps import reject_unknown_query
from api.errors import install_error_handlers
from api.headers import NoSniffMiddleware
from api.prometheus import ApiMetrics, MetricsMiddleware
from api.ratelimit import make_limiter
from api.routes import (
    adapters,
    base_models,
    datasets,
    health,
    infer,
    jobs,
    keys,
    lora_adapters,
    openai,
    openai_files,
    openai_fine_tuning,
)
from api.routes import tenants as tenant_routes
from application.engine_factory import start_serving
from application.ttl_cache import TtlCache
from service import tenants
from service.db import get_engine, make_sessionmaker
from service.queue import TaskProducer
from service.settings import Settings, get_settings
from service.store import get_store


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if settings.api_key:
        with app.state.sessions() as session:
            tenants.ensure_api_key(session, settings.api_key)
            session.commit()
    app.state.serving = start_serving(settings, app.state.sessions, app.state.store)
    try:
        yield
    finally:
        app.state.serving.close()
        app.state.producer.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_home()
    app = FastAPI(
        title="AdaLoRA Service",
        version="0.1.0",
        description="Fine-tune transformer models with AdaLoRA and serve the adapters.",
        lifespan=lifespan,
        dependencies=[Depends(reject_unknown_query)],
    )
    app.state.settings = settings
    app.state.sessions = make_sessionmaker(get_engine(settings.database_url, settings.db_limits))
    app.state.store = get_store(settings)
    app.state.producer = TaskProducer(settings.broker_url)
    limits = {
        "jobs": (settings.jobs_rate_per_s, settings.jobs_burst),
        "infer": (settings.infer_rate_per_s, settings.infer_burst),
        "infer_rows": (settings.infer_rows_per_s, settings.infer_rows_burst),
        "auth_failures": (settings.auth_failures_per_s, settings.auth_failures_burst),
    }
    app.state.rate_limits = {
        name: make_limiter(name, rate, burst, settings.rate_limit_store)
        for name, (rate, burst) in limits.items()
    }
    app.state.metrics = ApiMetrics(app.state.sessions, lambda: getattr(app.state, "serving", None))
    app.state.key_cache = TtlCache(settings.lookup_cache_ttl_s)
    install_error_handlers(app)
    for module in (
        health,
        base_models,
        keys,
        tenant_routes,
        datasets,
        jobs,
        adapters,
        infer,
        openai,
        openai_files,
        openai_fine_tuning,
        lora_adapters,
    ):
        app.include_router(module.router)
    # /ui → /ui/ by path alone: a redirect built from the Host header would send a client
    # wherever a forged header says.
    app.add_route(
        CONSOLE_PATH, lambda _: RedirectResponse(f"{CONSOLE_PATH}/"), include_in_schema=False
    )
    app.mount(CONSOLE_PATH, console_app(), name="console")
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        # Uploads stream to disk under their own size limit (api/uploads.py).
        exempt_paths=frozenset({"/datasets", "/v1/files", "/adapters/import"}),
    )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(NoSniffMiddleware)
    return app
