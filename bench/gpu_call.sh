#!/usr/bin/env bash
# One device call: bench/gpu_full.sh with its files gathered into $OUT/results.tgz (the device
# tool returns at most 8 files) and the log beside it. STEPS etc. as for gpu_full.sh.
set -u
FINAL=${OUT:-/tmp/out}
export OUT=/tmp/forge-out; rm -rf "$OUT" /tmp/pt; mkdir -p "$OUT"
bash bench/gpu_full.sh
cp "$OUT/log" "$FINAL/log" 2>/dev/null
find /tmp/pt -maxdepth 3 \( -name '*.out' -o -name '*.md' \) -exec cp --parents {} "$OUT" \; 2>/dev/null
tar -czf "$FINAL/results.tgz" -C "$OUT" .
