#!/usr/bin/env bash
# First look on the device machine: toolchain facts, ceilings, ncu metric names, one Triton and
# one NVRTC evaluation end to end. Usage (device tool): bash bench/gpu_smoke.sh
set -u
source bench/gpu_setup.sh || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L; python3 --version; command -v ncu; ncu --version | tail -1; id; ls -ld "$PWD" / /root 2>&1 | head -3
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.version.cuda)"
ls -l /dev/nvidia* | head; ls -ld /usr/local/cuda /usr/local/nvidia 2>&1
apply_sandbox_diagnosis "$OUT/sandbox_diag.txt"
for cand in ${CANDS:-triton_softmax cuda_nvrtc_softmax cuda_inline_softmax}; do
  timeout 300 python3 -m forge.cli.main eval softmax tests/fixtures/legit/$cand.py --json > "$OUT/$cand.json" 2> "$OUT/$cand.err"
  echo "== $cand rc=$?"; tail -5 "$OUT/$cand.err"
  python3 - "$OUT/$cand.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(r["status"], r["reasons"][:3], r["environment"], r["sandbox"])
print("phases", r["phase_seconds"])
for t in r["timings"]:
    print(t["input_set"], "cand", round(t["candidate"]["median_ms"], 4), "eager", t["eager"] and round(t["eager"]["median_ms"], 4), "compile", t["compiled"] and round(t["compiled"]["median_ms"], 4), "x", t["speedup_vs_eager"], t["roofline_fraction"], "cv", t["candidate"]["cv"])
print("suspicious", r["suspicious_reasons"], "kernels_seen", r["kernels_seen"][:5])
p = r["profile"]
print("profile", p and p["tool"], p and p["note"][:300], p and [(k["name"][:40], k["registers_per_thread"], len(k["metrics"])) for k in p["kernels"][:3]])
print("stderr", r["stderr"][-800:])
PY
done
if [ -n "${BENCH:-}" ] && grep -q '"status": "correct"' "$OUT/triton_softmax.json"; then
  python3 bench/eval_latency.py --json "$OUT/eval_latency.json"
  python3 bench/reproducibility.py --runs 5 --json "$OUT/reproducibility.json"
fi
