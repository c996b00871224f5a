"""One verdict on the GPU, printed in full: status, containment, phases, timings, profile.

python bench/evaluator_smoke.py [candidate.py] [op]
"""

from __future__ import annotations

import sys
from pathlib import Path

from forge.evaluator import EvalConfig, evaluate, resolve_problem

ROOT = Path(__file__).resolve().parent.parent

path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/fixtures/legit/triton_softmax.py"
op = sys.argv[2] if len(sys.argv) > 2 else "softmax"
result = evaluate(resolve_problem(op), path.read_text(), EvalConfig(device="cuda", profile=True))
print(result.model_dump_json(indent=1, exclude={"checks"}))
