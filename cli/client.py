"""The HTTP side of the CLI: one httpx client, API errors turned into readable exits."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated, Any

import httpx
import typer

DEFAULT_URL = "http://127.0.0.1:8000"

UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="ADALORA_URL", help="Service base URL.", show_default=True),
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key", envvar="ADALORA_KEY", help="API key (or ADALORA_KEY).", show_default=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")]
LimitOption = Annotated[
    int, typer.Option("--limit", min=1, help="Show at most this many (newest first).")
]
PAGE_SIZE = 200  # the API's largest page


class ApiClient:
    """Thin wrapper: base URL + bearer key; non-2xx answers exit with the API's message."""

    def __init__(self, url: str, key: str | None, timeout: float = 60.0) -> None:
        if not key:
            raise typer.BadParameter("an API key is required: pass --key or set ADALORA_KEY")
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach the service: {exc}")
        if response.status_code >= 400:
            fail(describe_error(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    def list_all(
        self, path: str, params: dict[str, Any] | None = None, limit: int = 1000
    ) -> dict[str, Any]:
        """Follow ``next_cursor`` until ``limit`` items; the answer keeps the API's shape, with
        ``next_cursor`` set when more exist beyond the limit (a note on stderr says so)."""
        collected: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = {**(params or {}), "limit": min(PAGE_SIZE, limit - len(collected))}
            if cursor:
                query["cursor"] = cursor
            page = self.json("GET", path, params=query)
            collected += items(page)
            cursor = page.get("next_cursor") if isinstance(page, dict) else None
            if not cursor or len(collected) >= limit:
                break
        if cursor:
            typer.secho(f"showing {len(collected)}; more exist (raise --limit)", err=True)
        return {"items": collected, "next_cursor": cursor}

    def stream(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._http.stream(method, path, **kwargs)


EVENT_STREAM = "text/event-stream"


def iter_sse(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event name, data) for each server-sent event; comments and ids are skipped (the
    payloads carry their ids)."""
    kind, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)


def describe_error(response: httpx.Response) -> str:
    """`<status>: <code>: <message>` from the API's error body, whatever its exact shape."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500]}"
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        parts = [str(error[k]) for k in ("code", "message") if error.get(k)]
        field = error.get("field") or error.get("param")  # OpenAI's shape names it param
        if field:
            parts.append(f"field {field}")
        if not parts and "detail" in error:
            parts.append(str(error["detail"]))
        if parts:
            return f"HTTP {response.status_code}: " + ": ".join(parts)
    return f"HTTP {response.status_code}: {error}"


def fail(message: str, code: int = 1) -> Any:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def items(payload: Any) -> list[dict[str, Any]]:
    """The items of a list endpoint's answer ({"items": [...], "next_cursor": ...})."""
    if isinstance(payload, dict) and isinstance(payload.get("items"), list):
        return payload["items"]
    return []
