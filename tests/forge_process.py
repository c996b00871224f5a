"""`forge` run as its own process, as a user runs it (shared by the CLI tests)."""

from __future__ import annotations

import subprocess
import sys


def run_forge(
    *args: str, env: dict | None = None, stdin: str | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "forge.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        input=stdin,
        cwd=cwd,
    )
