#!/usr/bin/env bash
# Make a Docker engine answer on this machine, for the docker sandbox backend and its tests
# (tests/test_sandbox_docker.py). Idempotent: exits 0 at once when `docker info` answers.
# Otherwise (as root) installs docker.io if missing, starts dockerd in the background with the
# default storage driver, checks that it can really run a container (an empty imported image
# with /usr and /lib bind-mounted read-only, as the backend does), and if not restarts it with
# --storage-driver=vfs. Exits non-zero with a message when no working engine comes up.
#
#   FORGE_DOCKERD_LOG     dockerd's log (default /var/log/forge-dockerd.log)
#   FORGE_DOCKERD_WAIT_S  seconds to wait for each dockerd start (default 60)
set -euo pipefail

LOG="${FORGE_DOCKERD_LOG:-/var/log/forge-dockerd.log}"
WAIT_S="${FORGE_DOCKERD_WAIT_S:-60}"
SMOKE_IMAGE="forge-docker-smoke:latest"

say() { echo "docker.sh: $*" >&2; }
die() {
    say "$*"
    say "the docker sandbox needs a running engine; without one use \`--sandbox local\`"
    exit 1
}
engine_up() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

# Run a trivial container the way sandbox/docker.py does (no registry: empty imported image).
smoke() {
    local mounts=() dir
    for dir in /usr /lib /lib64; do
        [ -e "$dir" ] && mounts+=(-v "$dir:$dir:ro")
    done
    if ! docker image inspect "$SMOKE_IMAGE" >/dev/null 2>&1; then
        tar cf - --files-from /dev/null | docker import - "$SMOKE_IMAGE" >/dev/null || return 1
    fi
    docker run --rm --network none --read-only --user 65534:65534 "${mounts[@]}" \
        "$SMOKE_IMAGE" /usr/bin/true
}

# Start dockerd with the given flags; 0 once it answers and runs a container, else stops it.
start_dockerd() {
    say "starting dockerd $* (log: $LOG)"
    setsid dockerd "$@" >>"$LOG" 2>&1 </dev/null &
    local pid=$! i
    for ((i = 0; i < WAIT_S; i++)); do
        if engine_up; then
            if smoke >>"$LOG" 2>&1; then
                say "engine up (pid $pid, storage driver $(docker info --format '{{.Driver}}'))"
                return 0
            fi
            say "dockerd $* answers but cannot run a container (see $LOG)"
            break
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            say "dockerd $* exited: $(tail -n 3 "$LOG")"
            return 1
        fi
        sleep 1
    done
    [ "$i" -lt "$WAIT_S" ] || say "dockerd $* did not answer within ${WAIT_S}s"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 1
    done
    die "dockerd (pid $pid) did not stop after SIGTERM; stop it and run again"
}

if engine_up; then
    say "engine already answers"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "no engine answers and installing/starting one needs root"
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    say "installing docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq docker.io >/dev/null || die "apt-get install -y docker.io failed"
fi
mkdir -p "$(dirname "$LOG")"
start_dockerd && exit 0
start_dockerd --storage-driver=vfs && exit 0
die "no working docker engine (tried the default storage driver and vfs); see $LOG"
