"""Failure evidence as the agents read it: a traceback keeps the frames of the candidate's own
file and the error; the frames of the evaluator's harness, torch and Triton are left out (with a
count), as they say nothing the Coder can change."""

from __future__ import annotations

import re

CANDIDATE_FILE = "forge_candidate.py"
"""The name the runner gives the candidate's source (forge.evaluator.runner)."""
FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line \d+')


def candidate_frames(text: str, own: str = CANDIDATE_FILE) -> str:
    """`text` with every traceback frame outside `own` removed (its `File ...` line and the code
    and caret lines indented below it); other lines are kept as they are."""
    kept: list[str] = []
    dropped = 0
    skipping = False
    for line in text.splitlines():
        frame = FRAME.match(line)
        if frame:
            skipping = not frame["file"].endswith(own)
            dropped += skipping
            if not skipping:
                kept.append(line)
        elif not (skipping and line.startswith("    ")):
            skipping = False
            kept.append(line)
    if dropped:
        kept.append(f"[{dropped} frames of the evaluator, torch or Triton left out]")
    return "\n".join(kept)
