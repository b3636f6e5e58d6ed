#!/usr/bin/env bash
# Installs what `make ops-check` and tests/test_operations.py run, from Debian's packages, when
# missing: prometheus (with promtool), haproxy and openssl. Nothing is started: the packages'
# services are kept from starting during the install, and the tests start their own Prometheus
# and HAProxy on 127.0.0.1.
set -euo pipefail
packages=(prometheus haproxy openssl)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
((${#missing[@]})) || exit 0
echo "installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    echo "error: installing ${missing[*]} needs root (or install them first)" >&2
    exit 1
fi
# Debian starts a package's service on install unless policy-rc.d says no; a Prometheus or
# HAProxy left running on the machine's ports is not what a check should leave behind.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
