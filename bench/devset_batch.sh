#!/usr/bin/env bash
# The development-set batch of docs/benchmarks.md ("The development set, final"), through the
# file bridge (shared/tools/llm_bridge.py) and the shared queue relayed by bench/queue_relay.sh.
#
#   bash bench/devset_batch.sh init KERNELBENCH_DIR    # writes .kernelbench/devset.toml
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
usage="usage: devset_batch.sh init KERNELBENCH_DIR | start NAME PORT [--search ...] | resume NAME"
verb=${1:?$usage}
if [ "$verb" = init ]; then
  # KERNELBENCH_DIR: a KernelBench checkout (or its KernelBench/ folder) with level1/ and level2/
  kb=${2:?$usage}
  [ -d "$kb/KernelBench" ] && kb=$kb/KernelBench
  mkdir -p .kernelbench
  suite=.kernelbench/devset.toml
  tmp=$(mktemp)
  for id in level1/25 level1/33 level1/35 level1/38 level1/48 level1/94 level2/14 level2/29 level2/56 level2/76; do
    file=$(ls "$kb/${id%/*}/${id#*/}"_*.py 2>/dev/null | head -1 || true)
    if [ -z "$file" ]; then
      echo "no $kb/${id}_*.py: KERNELBENCH_DIR must hold KernelBench's level1/ and level2/ files" >&2
      rm -f "$tmp"
      exit 2
    fi
    printf '[[item]]\nfile = "%s"\n\n' "$(realpath "$file")" >>"$tmp"
  done
  mv "$tmp" "$suite"
  echo "wrote $suite (10 problems)"
  exit 0
fi
name=${2:?NAME}
shift 2
case $verb in start | resume) ;; *)
  echo "$usage" >&2
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
