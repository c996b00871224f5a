#!/usr/bin/env bash
# Make Debian's chromium available for the browser tests of `forge serve`
# (tests/test_web_browser.py drives it headless through Playwright; no browser download).
# Idempotent: exits 0 at once when chromium already runs. Otherwise (as root) installs the
# `chromium` package, then checks that it renders a page headless. Exits non-zero with a
# message when no working chromium comes up.
set -euo pipefail

say() { echo "browser.sh: $*" >&2; }
die() {
    say "$*"
    say "the browser tests need chromium (apt-get install chromium, or set FORGE_CHROMIUM)"
    exit 1
}
renders() {
    command -v chromium >/dev/null 2>&1 &&
        chromium --headless --no-sandbox --disable-gpu --dump-dom 'data:text/html,<p>forge</p>' \
            2>/dev/null | grep -q '<p>forge</p>'
}

if renders; then
    say "chromium already works: $(chromium --version 2>/dev/null)"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "no chromium here and installing one needs root"
say "installing chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || die "apt-get update failed"
apt-get install -y -qq --no-install-recommends chromium >/dev/null ||
    die "apt-get install -y chromium failed"
renders || die "chromium is installed but does not render a page headless"
say "chromium works: $(chromium --version 2>/dev/null)"
