"""Start `forge serve`: check the settings and the database, listen, run the app under uvicorn.

Everything that can be wrong is found before the first request and raised as `ServeError`
(a one-line message with the fix): a missing database file, a port in use, a name that does not
resolve, a non-loopback address without a token. Problems of the database itself are the
engine's `DatabaseError`, one line too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field
from sqlalchemy.engine import make_url

from forge.db.engine import database_url, where
from forge.db.store import RunStore
from forge.web.app import LOOPBACK_NAMES, create_app
from forge.web.views import run_count

TOKEN_ENV = "FORGE_SERVE_TOKEN"
MIN_TOKEN_LENGTH = 16


class ServeError(ValueError):
    """`forge serve` cannot start as asked; the message is one line with the fix."""


class ServeSettings(BaseModel):
    """What `forge serve` was asked for."""

    host: str = "127.0.0.1"
    """Address to listen on. Loopback (127.0.0.1, ::1, localhost) by default; any other address
    makes the pages reachable from other machines and needs `token`."""
    port: int = Field(8765, ge=0, le=65535)
    """TCP port; 0 takes any free one (the line printed at start names it)."""
    token: str | None = None
    """When set, every request must carry it (`Authorization: Bearer TOKEN`, or a `?token=TOKEN`
    link once, which sets a cookie); required on a non-loopback address."""
    db: str | None = None
    """Database URL (default `$FORGE_DB_URL`, else SQLite at `$FORGE_HOME/forge.db`); opened
    read-only."""


def open_database(url: str | None) -> RunStore:
    """The store, read-only; a SQLite file that does not exist is refused (there is nothing to
    show, and a typo in --db should not look like an empty database)."""
    text = database_url(url)
    resolved = make_url(text)
    if resolved.get_backend_name() == "sqlite" and resolved.database not in (None, "", ":memory:"):
        path = Path(resolved.database).expanduser()
        if not path.exists():
            raise ServeError(
                f"no database at {path}: `forge optimize OP` records runs there, or point "
                "--db / FORGE_DB_URL at another database"
            )
    store = RunStore(text, read_only=True)
    store.list_runs(1)
    return store


def _address(host: str, port: int) -> tuple[socket.AddressFamily, tuple]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on '{host}': {exc.strerror}: give an IP address") from exc
    family, _, _, _, address = infos[0]
    return family, address


def is_loopback(address: tuple) -> bool:
    return ipaddress.ip_address(address[0]).is_loopback


def listen(settings: ServeSettings) -> socket.socket:
    """A listening socket for the settings, after the token rule is checked."""
    family, address = _address(settings.host, settings.port)
    if not is_loopback(address) and not settings.token:
        raise ServeError(
            f"listening on {settings.host} makes the database readable from other machines: "
            f"give a token with --token or {TOKEN_ENV} (every request must then carry it)"
        )
    if settings.token is not None and len(settings.token) < MIN_TOKEN_LENGTH:
        raise ServeError(
            f"the token is {len(settings.token)} characters long, fewer than {MIN_TOKEN_LENGTH}: "
            "make one with `python -c 'import secrets; print(secrets.token_urlsafe())'`"
        )
    try:
        sock = socket.create_server(address, family=family)
    except OSError as exc:
        raise ServeError(
            f"cannot listen on {settings.host} port {settings.port} ({exc.strerror or exc}): "
            "pick another --port, or stop what uses it"
        ) from exc
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(settings: ServeSettings, announce: Callable[[str], None]) -> None:
    """Check everything, then serve until interrupted (Ctrl-C). `announce` gets the line that
    says where the pages are."""
    import uvicorn

    store = open_database(settings.db)
    sock = listen(settings)
    loopback = is_loopback(sock.getsockname())
    app = create_app(
        store,
        token=settings.token,
        hosts=LOOPBACK_NAMES | {settings.host.lower()} if loopback else None,
    )
    runs = run_count(store)
    how = "; every request needs the token (open it once as ?token=...)" if settings.token else ""
    announce(
        f"serving {where(store.engine.url)} ({runs} run{'s' if runs != 1 else ''}) read-only at "
        f"{url_of(sock)}{how}; Ctrl-C stops"
    )
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        store.engine.dispose()
