#!/usr/bin/env bash
# Device run: the steps named in STEPS (latency agreement sweep repro gputests library route
# model ceilings precision throughput), after a sandbox diagnosis that turns off any containment measure that stops CUDA on
# this host. GPU_K: a pytest -k selection for gputests; *_T: seconds per step.
set -u -o pipefail
source bench/gpu_setup.sh || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -c "import torch, triton; print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/log"; nvidia-smi --query-gpu=driver_version --format=csv,noheader | tee -a "$OUT/log"; ncu --version | tail -1 | tee -a "$OUT/log"
apply_sandbox_diagnosis "$OUT/sandbox_diag.txt"
for step in ${STEPS:-latency agreement sweep gputests}; do
  case $step in
    latency) timeout ${LATENCY_T:-400} python3 bench/eval_latency.py --json "$OUT/eval_latency.json" ${LATENCY_ARGS:-} 2>&1 | grep -v Warn | tee -a "$OUT/log" ;;
    agreement) timeout ${AGREEMENT_T:-400} python3 bench/timing_agreement.py --json "$OUT/agreement.json" 2>&1 | grep -v Warn | tee -a "$OUT/log" ;;
    sweep) timeout ${SWEEP_T:-300} python3 bench/legit_sweep.py --json "$OUT/legit_sweep.json" ${SWEEP_ARGS:-} 2>"$OUT/sweep.err" | tee -a "$OUT/log" ;;
    repro) timeout ${REPRO_T:-200} python3 bench/reproducibility.py --runs 5 ${REPRO_ARGS:-} --json "$OUT/reproducibility.json" 2>/dev/null | tee -a "$OUT/log" ;;
    gputests) timeout -s INT -k 30 ${GPU_T:-300} python3 -m pytest -m gpu -q -rA --tb=short ${GPU_K:+-k "$GPU_K"} -p no:cacheprovider --basetemp=/tmp/pt --ignore=tests/test_sandbox_docker.py ${GPU_TESTS:-tests} > "$OUT/gputests.txt" 2>&1; tail -40 "$OUT/gputests.txt" | tee -a "$OUT/log" ;;
    library) timeout ${LIB_T:-300} python3 bench/library_bench.py --json "$OUT/library_bench.json" 2>&1 | tail -30 | tee -a "$OUT/log" ;;
    route) timeout ${ROUTE_T:-300} python3 bench/library_route_bench.py --device cuda --json "$OUT/route.json" 2>&1 | grep -v Warn | tee -a "$OUT/log" ;;
    model) timeout ${MODEL_T:-580} python3 bench/model_bench.py --out "$OUT/model_bench.json" ${MODEL_ARGS:-} 2>&1 | grep -v Warn | tee -a "$OUT/log" ;;
    throughput) timeout ${THROUGHPUT_T:-560} python3 bench/local_throughput.py --time-limit $(( ${THROUGHPUT_T:-560} - 120 )) --json "$OUT/local_throughput.json" ${THROUGHPUT_ARGS:-} 2>&1 | grep -v Warn | tee -a "$OUT/log" ;;
    ceilings) timeout ${CEIL_T:-120} python3 bench/ceilings.py --json "$OUT/ceilings.json" 2>&1 | tee -a "$OUT/log" ;;
    precision) (ncu --query-metrics 2>&1 | grep -E "ops_path_tensor_src_(tf32|bf16|fp16)" || echo "ncu lists no sm__ops_path_tensor_src_* metric") | tee -a "$OUT/log"
      timeout ${PRECISION_T:-480} python3 bench/precision_bench.py --out "$OUT/precision.json" ${PRECISION_ARGS:-} 2>&1 | grep -v Warn | tee -a "$OUT/log" ;;
  esac
done
