#!/usr/bin/env bash
# A self-signed certificate for localhost and 127.0.0.1, for the TLS example only (docs/security.md).
# Usage: deploy/tls/make-cert.sh DIR   writes DIR/modelserve.crt (what clients trust) and
# DIR/modelserve.pem (certificate and key, for HAProxy's `crt`). A real deployment uses a
# certificate from its own CA or an ACME client instead.
set -euo pipefail
dir="${1:?usage: $0 DIR}"
mkdir -p "$dir"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 -days 30 -nodes \
    -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "extendedKeyUsage=serverAuth" \
    -keyout "$dir/modelserve.key" -out "$dir/modelserve.crt" 2>/dev/null
cat "$dir/modelserve.crt" "$dir/modelserve.key" >"$dir/modelserve.pem"
rm "$dir/modelserve.key"
chmod 644 "$dir/modelserve.crt"
echo "$dir/modelserve.crt"
