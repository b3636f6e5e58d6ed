#!/usr/bin/env bash
# Installs HAProxy from Debian's package when it is missing (`make fleet-test` runs this first).
# Only the package: nothing is configured or started system-wide; the fleet test runs its own
# HAProxy in the foreground with deploy/haproxy/haproxy.cfg and stops it.
set -euo pipefail
if command -v haproxy >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "error: haproxy is missing and installing it needs root (apt-get install haproxy)" >&2
    exit 1
fi
echo "installing haproxy"
apt-get update -qq
# The package's service must not start a second HAProxy on the machine: policy-rc.d says no.
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created=1
fi
trap 'if [ "$created" -eq 1 ]; then rm -f "$policy"; fi' EXIT
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
haproxy -v | head -n 1
