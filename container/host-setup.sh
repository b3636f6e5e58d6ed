#!/usr/bin/env bash
# Makes this machine ready to build and run the image: installs the container tools from
# Debian's packages when they are missing, and writes the private podman configuration into
# the work folder ($CONTAINERS_DIR). The machine's global container configuration is left alone.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${CONTAINERS_DIR:?set CONTAINERS_DIR to the work folder}"

# runc, not crun: crun fails on these cgroup v1 hosts ("cgroups in hybrid mode not supported").
packages=(podman buildah runc debootstrap)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: installing ${missing[*]} needs root (or install them first)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

mkdir -p "$dir/run" "$dir/storage" "$dir/tmp"
nofile="$(ulimit -Hn)"
[ "$nofile" = unlimited ] && nofile=1048576
sed "s|@DIR@|$dir|g" "$here/storage.conf.in" >"$dir/storage.conf"
sed -e "s|@DIR@|$dir|g" -e "s|@NOFILE@|$nofile|g" "$here/containers.conf.in" >"$dir/containers.conf"
