"""`forge serve`'s web application (Starlette): read-only pages over one `RunStore`.

The pages are grouped in index sections (`SECTIONS`): a section has the title and path the
navigation bar shows and the routes it serves, so another index (batches, say) is one more
`Section` with its routes and template. Links are stable: `/runs/12`, `/candidates/345`,
`/candidates/345/diff`, `/library/7`, `/search?q=...`.

Every request passes `Guard` first: only Host names of this machine when the server listens on
loopback (a web page elsewhere cannot reach it through DNS rebinding), the token when one is set
(`Authorization: Bearer TOKEN`, or a `?token=TOKEN` link once, which sets a cookie and redirects
to the same page without it), and strict security headers on every answer (no script or style
from anywhere but this server).

Errors are pages, never tracebacks: an unknown id is a 404, a bad query parameter a 400, a
database that fails mid-way a 503; anything else a 500 page
(the traceback goes to the server's log only) with its one-line message.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forge.db.engine import DatabaseError, where
from forge.db.store import RecordNotFound, RunStore
from forge.web import views
from forge.web.templating import STATIC_DIR, code_css, render

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
TOKEN_COOKIE = "forge_serve"
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


@dataclass(frozen=True)
class Section:
    """An index page in the navigation bar, with the routes it serves."""

    title: str
    path: str
    routes: tuple[BaseRoute, ...]


def _store(request: Request) -> RunStore:
    return request.app.state.store


def page(request: Request, template: str, status_code: int = 200, **context: object) -> Response:
    html = render(
        template,
        sections=request.app.state.sections,
        path=request.url.path,
        url=request.url,
        database=request.app.state.database,
        **context,
    )
    return HTMLResponse(html, status_code=status_code)


class BadQuery(ValueError):
    """A query parameter the page cannot use (a 400 page)."""


def _query(model: type[views.Query], request: Request) -> views.Query:
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in exc.errors()
        )
        raise BadQuery(f"bad query parameter ({problems})") from exc


def runs_index(request: Request) -> Response:
    data = views.runs_page(_store(request), _query(views.RunFilter, request))
    return page(request, "runs.html.j2", data=data)


def run_detail(request: Request) -> Response:
    data = views.run_page(_store(request), request.path_params["run_id"])
    return page(request, "run.html.j2", data=data)


def candidate_detail(request: Request) -> Response:
    data = views.candidate_page(_store(request), request.path_params["candidate_id"])
    return page(request, "candidate.html.j2", data=data)


def candidate_diff(request: Request) -> Response:
    query = _query(views.DiffQuery, request)
    data = views.diff_page(_store(request), request.path_params["candidate_id"], query)
    return page(request, "diff.html.j2", data=data)


def batches_index(request: Request) -> Response:
    return page(request, "batches.html.j2", data=views.batches_page(_store(request)))


def batch_detail(request: Request) -> Response:
    data = views.batch_page(_store(request), request.path_params["batch_id"])
    return page(request, "batch.html.j2", data=data)


def library_index(request: Request) -> Response:
    data = views.library_page(_store(request), _query(views.LibraryFilter, request))
    return page(request, "library.html.j2", data=data)


def library_detail(request: Request) -> Response:
    data = views.entry_page(_store(request), request.path_params["entry_id"])
    return page(request, "entry.html.j2", data=data)


def search(request: Request) -> Response:
    data = views.search_page(_store(request), _query(views.SearchQuery, request))
    return page(request, "search.html.j2", data=data)


SECTIONS: tuple[Section, ...] = (
    Section(
        "Runs",
        "/runs",
        (
            Route("/runs", runs_index),
            Route("/runs/{run_id:int}", run_detail),
            Route("/candidates/{candidate_id:int}", candidate_detail),
            Route("/candidates/{candidate_id:int}/diff", candidate_diff),
        ),
    ),
    Section(
        "Batches",
        "/batches",
        (Route("/batches", batches_index), Route("/batches/{batch_id:int}", batch_detail)),
    ),
    Section(
        "Library",
        "/library",
        (Route("/library", library_index), Route("/library/{entry_id:int}", library_detail)),
    ),
    Section("Search", "/search", (Route("/search", search),)),
)


def _error(request: Request, status: int, message: str) -> Response:
    return page(
        request,
        "error.html.j2",
        status_code=status,
        status=status,
        reason=HTTPStatus(status).phrase,
        message=message,
    )


def _not_found(request: Request, exc: Exception) -> Response:
    return _error(request, 404, str(exc))


def _bad_query(request: Request, exc: Exception) -> Response:
    return _error(request, 400, str(exc))


def _database_failed(request: Request, exc: Exception) -> Response:
    return _error(request, 503, str(exc))


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error(request, 404, f"no page at {request.url.path}")
    return _error(request, exc.status_code, exc.detail)


def _internal_error(request: Request, exc: Exception) -> Response:
    return _error(request, 500, "the server failed on this page: its log says why")


def _code_css(_request: Request) -> Response:
    return Response(code_css(), media_type="text/css")


def _home(request: Request) -> Response:
    return RedirectResponse(request.app.state.sections[0].path)


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def cookie_value(token: str) -> str:
    """What the cookie holds: a digest of the token, not the token itself."""
    return hashlib.sha256(f"forge-serve:{token}".encode()).hexdigest()


def host_name(header: str) -> str:
    """`[::1]:8765` -> `::1`, `localhost:80` -> `localhost`."""
    return (urlsplit(f"//{header}").hostname or "").lower()


class Guard:
    """The checks every request passes (see the module docstring), as ASGI middleware."""

    def __init__(self, app: ASGIApp, token: str | None, hosts: frozenset[str] | None) -> None:
        self.app, self.token, self.hosts = app, token, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()
                ]
            await send(message)

        refusal = self._refusal(Request(scope))
        await (refusal or self.app)(scope, receive, send_secured)

    def _refusal(self, request: Request) -> Response | None:
        if self.hosts is not None and host_name(request.headers.get("host", "")) not in self.hosts:
            return PlainTextResponse(
                "this server answers only to this machine's own names (localhost, 127.0.0.1)",
                status_code=400,
            )
        if self.token is None:
            return None
        if _same(request.query_params.get("token"), self.token):
            rest = request.url.remove_query_params("token")
            target = rest.path + (f"?{rest.query}" if rest.query else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(
                TOKEN_COOKIE, cookie_value(self.token), httponly=True, samesite="strict"
            )
            return response
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if _same(bearer, self.token) or _same(
            request.cookies.get(TOKEN_COOKIE), cookie_value(self.token)
        ):
            return None
        return PlainTextResponse(
            "this server needs its token: open the link with ?token=TOKEN that `forge serve` was "
            "given, or send Authorization: Bearer TOKEN",
            status_code=401,
            headers={"www-authenticate": "Bearer"},
        )


def create_app(
    store: RunStore,
    *,
    token: str | None = None,
    hosts: frozenset[str] | None = LOOPBACK_NAMES,
    sections: tuple[Section, ...] = SECTIONS,
) -> Starlette:
    """The web app over `store` (open it read-only: `RunStore(url, read_only=True)`). `token`:
    required on every request when set; `hosts`: the Host names accepted (None: any, for a
    server on a public address, which then needs a token)."""
    handlers: dict[type[Exception] | int, Callable] = {
        RecordNotFound: _not_found,
        BadQuery: _bad_query,
        DatabaseError: _database_failed,
        HTTPException: _http_error,
        Exception: _internal_error,
    }
    routes = [Route("/", _home)]
    routes += [route for section in sections for route in section.routes]
    routes += [
        Route("/static/code.css", _code_css),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.store = store
    app.state.sections = sections
    app.state.database = where(store.engine.url)
    app.add_middleware(Guard, token=token, hosts=hosts)
    return app
