"""What the bench scripts write with `--json`: their figures, dated, with the machine named."""

from __future__ import annotations

import json
import platform
from datetime import date
from pathlib import Path


def write_json(path: str, figures: dict) -> None:
    """`figures` under the date, host name and Python version, in `path` (folders made)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = {
        "date": date.today().isoformat(),
        "machine": platform.node(),
        "python": platform.python_version(),
    }
    out.write_text(json.dumps({**stamp, **figures}, indent=2))
