"""The web console's static files, served at /ui by the API itself (no separate server, no
Node at run time). Its pages only talk to this origin, so the content security policy allows
nothing else: no third-party scripts, and no framing by another site."""

from __future__ import annotations

from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CONSOLE_DIR = Path(__file__).parent / "console"
CONSOLE_PATH = "/ui"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ConsoleFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        # A new release must reach browsers at once; the files are small.
        response.headers["Cache-Control"] = "no-cache"
        return response


def console_app() -> ConsoleFiles:
    return ConsoleFiles(directory=CONSOLE_DIR, html=True)
