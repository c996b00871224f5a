#!/usr/bin/env bash
# The development-set batch of docs/benchmarks.md ("The development set, final"), through the
# file bridge (shared/tools/llm_bridge.py) and the shared queue relayed by bench/queue_relay.sh.
#
#   bash bench/devset_batch.sh start NAME PORT [--search KEY=VALUE ...]   # a new batch
#   bash bench/devset_batch.sh resume NAME                                # after a stop or crash
#
# NAME's database, FORGE_HOME and batch log live under $DEVSET_RUNS/NAME (default
# /work/devrun2/NAME); the bridge for NAME must serve 127.0.0.1:PORT (a resumed batch keeps the
# address it was started with). The suite is
# .kernelbench/devset.toml (KernelBench files, git-ignored). Configurations measured so far:
#   defaults: --search max_configs=2
#   baseline: --search judge_turns=1 --search memory_examples=0 --search technique_hints=false
#             --search sol_stop=none --search autotune_configs=false
# An ablation row is `baseline` with one of those switched back on (or `defaults` with one off).
set -euo pipefail
verb=${1:?usage: devset_batch.sh start NAME PORT [--search ...] | resume NAME}
name=${2:?NAME}
shift 2
case $verb in start | resume) ;; *)
  echo "usage: devset_batch.sh start NAME PORT [--search ...] | resume NAME" >&2
  exit 2
  ;;
esac
runs=${DEVSET_RUNS:-/work/devrun2}/$name
mkdir -p "$runs/home"
export FORGE_HOME=$runs/home OPENAI_API_KEY=bridge-key LITELLM_LOCAL_MODEL_COST_MAP=True
export PYTHONUNBUFFERED=1
db=sqlite:///$runs/forge.db
case $verb in
  start)
    port=${1:?PORT}
    shift
    exec forge batch .kernelbench/devset.toml --name "devset-$name" --model openai/bridge \
      --api-base "http://127.0.0.1:$port/v1" --executor "queue:$PWD/.queue" --queue-wait 5400 \
      --gpu H200 --rounds 4 --device cuda --concurrency 10 --db "$db" "$@" >>"$runs/batch.log" 2>&1
    ;;
  resume)
    exec forge batch --resume 1 --model openai/bridge --concurrency 10 --db "$db" \
      >>"$runs/batch.log" 2>&1
    ;;
esac
