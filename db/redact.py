"""Keep secrets out of everything Forge stores or logs.

Every text the database receives passes through `redact`: the values of secret-looking
environment variables (the sandbox's `SECRET_NAME` rule: `*_KEY`, `*_TOKEN`, `*_SECRET`,
provider prefixes ...) are replaced by `[REDACTED:NAME]`, and well-known key shapes
(`sk-...`, `Bearer ...`, a password in a URL) are masked even when they did not come from the
environment (a key typed into `--api-base`, echoed by a provider's error message).
`install_log_redaction()` does the same for log records.
"""

from __future__ import annotations

import logging
import os
import re

from forge.sandbox.base import SECRET_NAME

MIN_SECRET_LENGTH = 6
"""Shorter values (`1`, `true`) are not treated as secrets: replacing them would garble text."""

_PATTERNS = (
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "sk-[REDACTED]"),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9_\-.=:/+]{8,}"), r"\1 [REDACTED]"),
    (re.compile(r"(?i)(api[_-]?key[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9_\-.]{8,}"), r"\1[REDACTED]"),
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+@"), r"\1[REDACTED]@"),
)


def secret_values(environ: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(name, value) of the environment's secret-looking variables, longest value first."""
    env = os.environ if environ is None else environ
    found = [
        (name, value)
        for name, value in env.items()
        if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH
    ]
    return sorted(found, key=lambda item: -len(item[1]))


def redact(text: str, environ: dict[str, str] | None = None) -> str:
    """`text` with every secret value and key-shaped token masked."""
    if not text:
        return text
    for name, value in secret_values(environ):
        if value in text:
            text = text.replace(value, f"[REDACTED:{name}]")
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in a record's message and traceback. Attach it to
    handlers (`install_log_redaction`): third-party libraries log raw provider responses at
    DEBUG level, and a provider may echo the key back in an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_log_redaction(handlers: list[logging.Handler] | None = None) -> None:
    """Add a RedactingFilter to `handlers`, once each; by default to every handler that exists
    now: the root logger's and those libraries attach to their own loggers (litellm writes to
    stderr through its own). Call it after configuring logging."""
    if handlers is None:
        loggers = [logging.getLogger()] + [
            logger
            for logger in logging.Logger.manager.loggerDict.values()
            if isinstance(logger, logging.Logger)
        ]
        handlers = [h for logger in loggers for h in logger.handlers]
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
