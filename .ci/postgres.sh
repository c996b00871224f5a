#!/usr/bin/env bash
# Make PostgreSQL's server binaries available for the database tests: tests/postgres_server.py
# starts a server of its own from them (initdb into a temporary folder, a Unix socket there) once
# per test session. Idempotent: exits 0 at once when the binaries are there (Debian's package is
# on this kind of machine already). Otherwise, as root, installs Debian's `postgresql` package
# without its default cluster (no service is started: the tests start their own server).
set -euo pipefail

LOG="${FORGE_POSTGRES_INSTALL_LOG:-/var/log/forge-postgres-install.log}"

say() { echo "postgres.sh: $*" >&2; }
die() {
    say "$*"
    say "the PostgreSQL database tests need the server binaries (Debian's postgresql package)"
    exit 1
}
bindir() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$found" ] && [ -x "$found/initdb" ] && [ -x "$found/postgres" ]; then
        echo "$found"
    fi
}

if [ -n "$(bindir)" ]; then
    say "server binaries in $(bindir)"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "no server binaries in /usr/lib/postgresql/*/bin and installing them needs root"
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$(dirname "$LOG")"
apt_get() {
    apt-get "$@" >>"$LOG" 2>&1 || die "apt-get $* failed: $(tail -n 3 "$LOG")"
}
say "installing Debian's postgresql package (log: $LOG)"
apt_get update -qq
apt_get install -y -qq --no-install-recommends postgresql-common
# No default cluster (and so no service on port 5432): the tests run their own server.
sed -i 's/^#* *create_main_cluster *=.*/create_main_cluster = false/' \
    /etc/postgresql-common/createcluster.conf
apt_get install -y -qq --no-install-recommends postgresql
[ -n "$(bindir)" ] || die "postgresql installed but no initdb/postgres under /usr/lib/postgresql/*/bin"
say "server binaries in $(bindir)"
