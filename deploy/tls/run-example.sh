#!/usr/bin/env bash
# The worked example of docs/security.md: HAProxy terminating TLS in front of a running
# `make serve`, with a self-signed certificate made here and an API key and a basic-auth user.
#
#   deploy/tls/run-example.sh            # HTTPS on 127.0.0.1:8443 -> the service on 127.0.0.1:3000
#   deploy/tls/run-example.sh --check    # only check the configuration (haproxy -c)
#
# Environment (all optional): BACKEND (127.0.0.1:3000), HTTPS_BIND (127.0.0.1:8443),
# TLS_EXAMPLE_DIR (a new temporary folder), API_KEY and BASIC_AUTH_USER/BASIC_AUTH_PASSWORD
# (random when unset; printed). HAProxy runs in the foreground until Ctrl-C.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v haproxy >/dev/null || { echo "haproxy is not installed (Debian: apt-get install haproxy)" >&2; exit 1; }

export BACKEND="${BACKEND:-127.0.0.1:3000}"
export HTTPS_BIND="${HTTPS_BIND:-127.0.0.1:8443}"
dir="${TLS_EXAMPLE_DIR:-$(mktemp -d -t modelserve-tls-XXXXXX)}"
mkdir -p "$dir"

"$here/make-cert.sh" "$dir" >/dev/null
export CERT_PEM="$dir/modelserve.pem"

api_key="${API_KEY:-$(openssl rand -hex 24)}"
printf '%s' "$api_key" | sha256sum | cut -d' ' -f1 >"$dir/api-key-sha256.txt"
export API_KEY_HASHES="$dir/api-key-sha256.txt"

export BASIC_AUTH_USER="${BASIC_AUTH_USER:-client}"
password="${BASIC_AUTH_PASSWORD:-$(openssl rand -hex 12)}"
BASIC_AUTH_HASH="$(openssl passwd -6 "$password")"
export BASIC_AUTH_HASH

if [ "${1:-}" = "--check" ]; then
    exec haproxy -c -f "$here/haproxy.cfg"
fi

cat <<INFO
HTTPS on $HTTPS_BIND -> modelserve on $BACKEND (files in $dir)
  curl --cacert $dir/modelserve.crt -H 'X-API-Key: $api_key' https://$HTTPS_BIND/v2/models/classifier
  curl --cacert $dir/modelserve.crt -u '$BASIC_AUTH_USER:$password' https://$HTTPS_BIND/v2/models/classifier
INFO
exec haproxy -db -f "$here/haproxy.cfg"
