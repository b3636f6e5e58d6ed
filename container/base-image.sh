#!/usr/bin/env bash
# Makes the local base image, localhost/debian:bookworm, unless the store already has it from
# this same recipe: a minimal Debian made with debootstrap from the Debian mirror this
# machine's apt uses, so no container registry is needed. The root filesystem archive is
# cached in $MODELSERVE_CACHE (default ~/.cache/modelserve): a fresh clone on the same machine
# imports it in seconds instead of running debootstrap again. Both the archive's name and a
# label on the image carry a hash of this script, so a changed recipe makes a new base.
set -euo pipefail
image=localhost/debian:bookworm
suite="${DEBIAN_SUITE:-bookworm}"
cache="${MODELSERVE_CACHE:-$HOME/.cache/modelserve}"
recipe="$(sha256sum "$0" | cut -c1-12)"
archive="$cache/debian-$suite-$recipe.tar"
label=org.modelserve.base-recipe

if podman image exists "$image" \
    && [ "$(podman image inspect --format "{{index .Labels \"$label\"}}" "$image")" = "$recipe" ]; then
    exit 0
fi

# The URI apt uses for a suite, from its sources (deb822 or one-line format).
apt_uri() {
    local wanted="$1" file sources=()
    for file in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
        if [ -f "$file" ]; then sources+=("$file"); fi
    done
    if ((${#sources[@]} == 0)); then return; fi
    awk -v suite="$wanted" '
        /^URIs:/ { uris = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) { print uris; exit } }
        $1 == "deb" && $3 == suite { print $2; exit }
    ' "${sources[@]}"
}

# Docs, man pages and translations are never read in an image; dpkg skips them from now on
# (for the packages the Dockerfile installs too), keeping the copyright files.
write_dpkg_excludes() {
    cat >"$1/etc/dpkg/dpkg.cfg.d/excludes" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    find "$1/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$1"/usr/share/man/* "$1"/usr/share/info/*
    find "$1/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
}

# The suite, its updates and its security updates, from the mirrors apt uses here.
write_apt_sources() {
    local mirror="$2" security
    security="$(apt_uri "$suite-security")"
    cat >"$1/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${security:-http://deb.debian.org/debian-security} $suite-security main
EOF
}

if [ ! -s "$archive" ]; then
    mirror="${DEBIAN_MIRROR:-$(apt_uri "$suite")}"
    mirror="${mirror:-http://deb.debian.org/debian}"
    echo "debootstrap $suite from $mirror (cached in $archive)"
    mkdir -p "$cache"
    rootfs="$(mktemp -d "$cache/rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
    if ! debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
        tail -n 30 "$rootfs.log" >&2
        exit 1
    fi
    write_dpkg_excludes "$rootfs"
    write_apt_sources "$rootfs" "$mirror"
    # Downloaded packages and package lists: each image build fetches fresh lists.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    tar -C "$rootfs" --numeric-owner -cf "$archive.partial" .
    mv "$archive.partial" "$archive"
    # Archives of older recipes are never used again.
    find "$cache" -maxdepth 1 -name "debian-$suite-*.tar" -not -name "${archive##*/}" -delete
fi
podman import --quiet --change 'CMD ["/bin/bash"]' --change "LABEL $label=$recipe" "$archive" "$image" >/dev/null
echo "imported $image (recipe $recipe)"
