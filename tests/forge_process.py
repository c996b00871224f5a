"""`forge` run as its own process, as a user runs it (shared by the CLI tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


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


def descendants(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            children += [child, *descendants(child)]
    return children


def kill_9_tree(pid: int) -> None:
    """SIGKILL `pid` and its descendants (a `forge` process and the sandboxed evaluations it
    started), as a crash would; one that exited meanwhile is already where it should be."""
    for victim in [pid, *descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
