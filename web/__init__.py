"""Forge's web pages: `forge serve` (a read-only browser over the database, `forge.web.app`).

Templates live in `templates/` (Jinja2, StrictUndefined, autoescaped; `base.html.j2` is the
layout every page extends) and assets in `static/`, served from the package: no CDN.
"""
