"""Run one small kernel under ncu with Forge's metric list: prints which metrics ncu rejects."""

import subprocess
import sys

from forge.evaluator.profiling import NCU_METRICS

prog = "import torch; x=torch.randn(1<<20,device='cuda'); torch.cuda.nvtx.range_push('forge_profile'); y=x*2; torch.cuda.synchronize(); torch.cuda.nvtx.range_pop()"
cmd = [
    "ncu",
    "--nvtx",
    "--nvtx-include",
    "forge_profile/",
    "--metrics",
    ",".join(NCU_METRICS),
    "--csv",
    "--page",
    "raw",
    sys.executable,
    "-c",
    prog,
]
p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
print("rc", p.returncode)
print(p.stdout[-3000:])
print(p.stderr[-2000:])
