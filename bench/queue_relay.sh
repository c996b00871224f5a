#!/usr/bin/env bash
# Relay a queue:DIR executor's jobs through the device tool, which copies the working tree to the
# GPU machine and brings back files from $OUT, but shares no directory while a command runs.
#
# Here (controller: `forge optimize|batch ... --executor queue:$PWD/.queue`, with .queue ignored
# by git), once jobs are pending, make a device call that carries .queue, .whl and .devcache:
#   bash bench/queue_relay.sh drain          # GPU machine: forge worker --drain, results -> $OUT
#   THEN="python3 -m pytest -m gpu ..." DRAIN_LIMIT=300 bash bench/queue_relay.sh drain
#                                            # ... then THEN's commands, output in $OUT/then.log
# then here:
#   bash bench/queue_relay.sh collect /work/.device/N/results.tgz
# which puts the results where the waiting controllers read them and removes their pending jobs
# (the GPU machine claimed its copies). The controllers wait `queue_wait_s` for a claim: set it
# longer than the time between rounds.
set -euo pipefail
QUEUE=${QUEUE:-.queue}
BASELINES=${BASELINES:-.devcache/baselines.tgz}  # carried with .queue: `carry` both
case ${1:-} in
  drain)
    source bench/gpu_setup.sh
    apply_sandbox_diagnosis /tmp/sandbox_diag.txt >/dev/null
    # torch.compile baselines timed by an earlier drain (same GPU model and versions: the cache
    # key says so) come back in BASELINES and are reused instead of compiled again.
    if [ -f "$BASELINES" ]; then tar -xzpPf "$BASELINES"; fi
    rm -rf "$QUEUE/results"  # this copy's results were collected already: bring back new ones only
    # DRAIN_LIMIT seconds (0: none) bounds the drain within the device call; a job cut off
    # stays pending here and is taken by the next drain
    timeout -s INT "${DRAIN_LIMIT:-0}" python3 -m forge.cli.main worker --queue "$QUEUE" --drain || true
    tar -czf "${OUT:?}/results.tgz" -C "$QUEUE" results
    # THEN: commands for the rest of the call, in this set-up environment (GPU tests, say)
    if [ -n "${THEN:-}" ]; then bash -c "$THEN" > "$OUT/then.log" 2>&1 || true; fi
    { find "$FORGE_HOME/cache" -path '*/baselines/*.json' -print0 2>/dev/null || true; } |
      tar -czpf "$OUT/baselines.tgz" --null -T - -P
    ;;
  collect)
    archive=${2:?usage: queue_relay.sh collect RESULTS.tgz}
    tar -xzf "$archive" -C "$QUEUE"
    for result in "$QUEUE"/results/*.json; do
      [ -e "$result" ] && rm -f "$QUEUE/pending/$(basename "$result")"
    done
    ls "$QUEUE/results" | wc -l | xargs echo "results in $QUEUE/results:"
    saved=$(dirname "$archive")/baselines.tgz
    if [ -f "$saved" ]; then mkdir -p "$(dirname "$BASELINES")" && cp "$saved" "$BASELINES"; fi
    ;;
  *) echo "usage: bash bench/queue_relay.sh drain | collect RESULTS.tgz" >&2; exit 2 ;;
esac
