# Source this on the device machine from the repository root: installs the carried wheels
# (.whl, made by ../shared/tools/gpu-wheels.sh) and makes the repository importable as `forge`.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/forge
chmod -R o+rX /tmp/site /tmp/pkg "$PWD" 2>/dev/null
export PYTHONPATH=/tmp/site:/tmp/pkg
export FORGE_HOME=/tmp/forge-home
