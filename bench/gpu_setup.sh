# Source this on the device machine from the repository root: installs the carried wheels
# (.whl, made by ../shared/tools/gpu-wheels.sh) and makes the repository importable as `forge`.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/forge
chmod -R o+rX /tmp/site /tmp/pkg "$PWD" 2>/dev/null
export PYTHONPATH=/tmp/site:/tmp/pkg
export FORGE_HOME=/tmp/forge-home

# Run the sandbox diagnosis into file $1 (also printed) and export the FORGE_SANDBOX_* settings it
# names, if any: the containment measures that stop CUDA on this host are turned off.
apply_sandbox_diagnosis() {
  python3 bench/sandbox_gpu_diag.py | tee "$1"
  if tail -1 "$1" | grep -q =; then eval "$(tail -1 "$1")"; fi
}
