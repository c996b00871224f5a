"""Fixtures shared by the test modules (keep this small and generic)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/fixtures: legit/ (candidates that must pass), cheats/ (that must not), bad/."""
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def forge_cache_dir() -> Iterator[Path]:
    """A compiler cache (Triton, torch extensions, cupy) shared by the evaluations of one test
    session, so that tests never write to the user's ~/.forge. Not under pytest's tmp_path: that
    is mode 0700, and a sandbox that drops privileges (uid 65534) could not reach it."""
    path = Path(tempfile.mkdtemp(prefix="forge-test-cache-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
