#!/usr/bin/env bash
# Device run: eval latency (cold/warm), every legit candidate, then the GPU tests.
set -u -o pipefail
source bench/gpu_setup.sh || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -c "import os,torch; print(torch.cuda.get_device_name())"
python3 bench/sandbox_gpu_diag.py > "$OUT/sandbox_diag.txt"; cat "$OUT/sandbox_diag.txt"; tail -1 "$OUT/sandbox_diag.txt" | grep -q = && eval "$(tail -1 "$OUT/sandbox_diag.txt")"
for step in ${STEPS:-latency sweep gputests}; do
  case $step in
    latency) timeout 400 python3 bench/eval_latency.py --json "$OUT/eval_latency.json" 2>&1 | grep -v Warn | tee -a "$OUT/log" ;;
    sweep) timeout ${SWEEP_T:-300} python3 bench/legit_sweep.py --json "$OUT/legit_sweep.json" ${SWEEP_ARGS:-} 2>"$OUT/sweep.err" | tee -a "$OUT/log" ;;
    repro) timeout ${REPRO_T:-200} python3 bench/reproducibility.py --runs 5 ${REPRO_ARGS:-} --json "$OUT/reproducibility.json" 2>/dev/null | tee -a "$OUT/log" ;;
    gputests) timeout ${GPU_T:-300} python3 -m pytest -m gpu -q -p no:cacheprovider --basetemp=/tmp/pt ${GPU_TESTS:-tests} 2>&1 | tail -40 | tee -a "$OUT/log" ;;
    library) timeout 200 python3 bench/library_bench.py --json "$OUT/library_bench.json" 2>&1 | tail -30 | tee -a "$OUT/log" ;;
  esac
done
