"""Every error leaves the API as {"error": {"code", "message", "field"}}; never a stack trace.

Under /v1 (the OpenAI-compatible routes) the same errors take OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, and a request OpenAI would call invalid is a 400
(its clients raise BadRequestError for it) rather than a 422.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from adalora_core.errors import ConfigError
from api.disconnect import ClientGone
from application.errors import RequestError
from service.store import StoreUnavailable

log = logging.getLogger("adalora.api")

_LOCATION_ROOTS = {"body", "query", "path", "header", "cookie"}
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


OPENAI_PREFIX = "/v1/"
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    request: Request | None = None,
) -> JSONResponse:
    if request is not None and request.url.path.startswith(OPENAI_PREFIX):
        status = 400 if status == 422 else status
        kind = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        body = {"error": {"message": message, "type": kind, "param": field, "code": code}}
        return JSONResponse(body, status_code=status, headers=headers)
    body = {"error": {"code": code, "message": message, "field": field}}
    return JSONResponse(body, status_code=status, headers=headers)


# Names pydantic gives the members of a union in an error's location ("constrained-str",
# "list[TextPart]", "function-after[...]", a model's class name): not fields of the request.
_TYPE_TAG = re.compile(r"^(str|int|float|bool|bytes|none|[A-Z]\w*)$|[\[\-]")


def dotted_location(loc: Sequence[Any]) -> str | None:
    """("body", "adalora", "init_r") -> "adalora.init_r"; list indexes stay as numbers, and
    the union members pydantic names along the way are left out, so the field is the one the
    caller sent (``messages.0.content``, not ``messages.0.content.constrained-str``)."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in _LOCATION_ROOTS:
        parts = parts[1:]
    kept = parts[:1] + [p for p in parts[1:] if not _TYPE_TAG.search(p)]
    return ".".join(kept) or None


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestError)
    return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers, request)


NOT_AN_OBJECT = {"model_attributes_type", "model_type", "dict_type"}


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = dotted_location(first.get("loc", ()))
    message = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        return error_response(
            422, "invalid_json", "request body is not valid JSON", None, None, request
        )
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") in NOT_AN_OBJECT:
        # e.g. a JSON body sent as text/plain arrives as a string
        message = "the request body must be a JSON object (Content-Type: application/json)"
        return error_response(422, "validation_error", message, None, None, request)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return error_response(422, "validation_error", message, field, None, request)


async def _config_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConfigError)
    return error_response(422, "invalid_config", exc.message, exc.field, None, request)


def _allowed_methods(request: Request) -> str:
    """Every method any route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "__none__"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and message == "Not Found":
        message = "no such route"
    if exc.status_code == 405:
        message = "method not allowed"
        headers["Allow"] = _allowed_methods(request)
    return error_response(exc.status_code, code, message, None, headers or None, request)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc.__class__.__name__)
    message = "the database is unavailable; try again shortly"
    return error_response(503, "database_unavailable", message, None, None, request)


async def _database_busy(request: Request, exc: Exception) -> JSONResponse:
    # Every pooled connection stayed taken past db_pool_timeout_s: a burst, not an outage, so
    # the client is told to retry rather than shown a 500.
    log.warning("database pool exhausted: %s", exc)
    message = "the service is busy: no database connection came free in time; retry shortly"
    return error_response(503, "database_busy", message, None, {"Retry-After": "1"}, request)


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The artifact store is down or restarting: nothing was stored (an upload's row is written
    # only after its file); the details (endpoint, key) go to the log, not to the caller.
    log.warning("artifact store unavailable: %s", exc)
    message = "the artifact store is unavailable; try again shortly"
    return error_response(503, "store_unavailable", message, None, {"Retry-After": "5"}, request)


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    # The database refused a value validation let through (e.g. a NUL byte in an id).
    log.info("database rejected a value: %s", exc.__class__.__name__)
    message = "a value in the request cannot be stored"
    return error_response(422, "invalid_value", message, None, None, request)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody is left to read an answer; the code nginx logs for this case.
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal server error", None, None, request)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ConfigError, _config_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(PoolTimeoutError, _database_busy)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(Exception, _unexpected)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the given error statuses, all with the error body."""
    from api.schemas import ErrorResponse

    return {
        status: {"model": ErrorResponse, "description": _STATUS_CODES.get(status, "error")}
        for status in statuses
    }
