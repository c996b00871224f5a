"""Which containment measure stops CUDA from initialising in the sandboxed worker?

Starts `torch.cuda.init()` in a child under each measure alone and prints one line per measure,
then the FORGE_SANDBOX_* settings that keep the GPU usable.
"""

import subprocess
import sys

from forge.sandbox.policy import SandboxConfig, preexec

PROBE = "import torch; torch.cuda.init(); print('ok', torch.cuda.get_device_name())"
LANDLOCK = (
    "from forge.sandbox.policy import restrict_filesystem; restrict_filesystem(['/tmp', '/dev']);"
    + PROBE
)
# CUDA up first (as the worker does), then reads restricted (scratch and caches in the job's own
# directory, as the worker sets them), then a Triton kernel compiles and runs.
READS = (
    "import torch, triton, triton.language as tl; torch.cuda.init(); torch.empty(1, device='cuda');"
    "from forge.sandbox.policy import restrict_filesystem, default_readable; import tempfile;"
    "import os; d = tempfile.mkdtemp(); tempfile.tempdir = d; os.environ.update(TMPDIR=d, TRITON_CACHE_DIR=d);"
    "restrict_filesystem([d, '/dev'], default_readable());"
    "import importlib.util, shutil; f = os.path.join(d, 'cand.py');"
    "shutil.copy(os.path.join(os.path.dirname(__import__('forge').__file__), 'tests/fixtures/legit/triton_softmax.py'), f);"
    "s = importlib.util.spec_from_file_location('cand', f); m = importlib.util.module_from_spec(s); s.loader.exec_module(m);"
    "x = torch.randn(4, 100, device='cuda'); print('ok', float(m.softmax_forward(x).sum()))"
)


def attempt(label: str, code: str, **kwargs) -> bool:
    try:
        p = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, **kwargs
        )
    except PermissionError as exc:
        print(f"{label:12s} FAILS {exc}")
        return False
    ok = p.returncode == 0
    lines = (p.stdout + p.stderr).strip().splitlines()
    shown = lines[-1:] if ok else lines[-6:]  # a failure keeps its traceback's tail
    print(
        f"{label:12s} {'ok' if ok else 'FAILS'} " + " | ".join(line.strip()[:200] for line in shown)
    )
    return ok


config = SandboxConfig()
results = {
    "plain": attempt("plain", PROBE),
    "rlimits": attempt("rlimits", PROBE, preexec_fn=preexec(config, False, False, None)),
    "netns": attempt("netns", PROBE, preexec_fn=preexec(config, True, False, None)),
    "nobody": attempt("nobody", PROBE, preexec_fn=preexec(config, False, True, None)),
    "landlock": attempt("landlock", LANDLOCK),
    "init+landlock": attempt(
        "init+landlock",
        "import torch; torch.cuda.init(); torch.empty(1, device='cuda');" + LANDLOCK,
    ),
    "init+reads": attempt("init+reads", READS),
}
off = {
    "netns": "FORGE_SANDBOX_ISOLATE_NETWORK=0",
    "nobody": "FORGE_SANDBOX_DROP_PRIVILEGES=0",
    "init+landlock": "FORGE_SANDBOX_RESTRICT_WRITES=0",
    "init+reads": "FORGE_SANDBOX_RESTRICT_READS=0",
}
print("export " + " ".join(v for k, v in off.items() if not results[k]))
