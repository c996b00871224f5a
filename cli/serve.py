"""`forge serve`: browse the database in a web browser (read-only; `forge.web`)."""

from __future__ import annotations

from typing import Annotated

import typer

from forge.cli.errors import fail

WEB_EXTRA = ("starlette", "uvicorn", "pygments")
"""The modules of the `web` extra."""


def serve(
    host: Annotated[
        str,
        typer.Option(
            help="address to listen on; anything but loopback (127.0.0.1, ::1) needs --token"
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free one)")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FORGE_SERVE_TOKEN",
            show_envvar=True,
            help="required on every request when set (16+ characters)",
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL (default $FORGE_DB_URL, else $FORGE_HOME/forge.db)"),
    ] = None,
) -> None:
    """Serve read-only web pages over the database: runs, candidates, the library, search."""
    try:
        from forge.web.server import ServeError, ServeSettings
        from forge.web.server import serve as run_server
    except ModuleNotFoundError as exc:
        if exc.name not in WEB_EXTRA:
            raise
        fail(f"forge serve needs {exc.name}: install the web extra (pip install 'opforge[web]')")
    try:
        run_server(ServeSettings(host=host, port=port, token=token, db=db), typer.echo)
    except ServeError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("stopped")
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
