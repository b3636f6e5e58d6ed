#!/usr/bin/env bash
# Builds the image from a fresh Bento and leaves, for `make image` (VARIANT=cpu, the default):
#   localhost/modelserve:<version> and :latest   in the private podman store
#   dist/modelserve-cpu.oci.tar                    the image as an OCI archive (podman save)
#   dist/modelserve-cpu.sbom.json                  CycloneDX SBOM of the image's Python environment
# and for `make image-gpu` (VARIANT=gpu): localhost/modelserve:<version>-gpu and :latest-gpu,
# dist/modelserve-gpu.oci.tar, from container/Dockerfile.gpu (no SBOM stage there yet).
# Needs: container/host-setup.sh (and for cpu container/base-image.sh) done, CONTAINERS_* exported.
set -euo pipefail
cd "$(dirname "$0")/.."
bentoml="${BENTOML:-.venv/bin/bentoml}"
python="${PYTHON:-.venv/bin/python}"
image="${IMAGE:-localhost/modelserve}"
dist="${DIST:-dist}"
variant="${VARIANT:-cpu}"
case "$variant" in
cpu) dockerfile=container/Dockerfile suffix="" ;;
gpu) dockerfile=container/Dockerfile.gpu suffix=-gpu ;;
*) echo "error: VARIANT must be cpu or gpu, not $variant" >&2 && exit 2 ;;
esac
version="$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The build context: a Bento built into a throwaway BentoML home, so it holds exactly what
# bentofile.yaml includes, from this working tree.
export BENTOML_HOME="$work/bentoml"
bento_tag="$("$bentoml" build --output tag | sed -n 's/^__tag__://p')"
context="$BENTOML_HOME/bentos/${bento_tag%%:*}/${bento_tag#*:}"
echo "bento $bento_tag"

# Pip inside the build may need this host's CA bundle (TLS-intercepting proxies). It goes in as
# a build secret, mounted only while a RUN step runs, so no layer of the image holds it. An
# empty file means "none".
ca_bundle="${HOST_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"
if [ -z "$ca_bundle" ] || [ ! -r "$ca_bundle" ]; then
    ca_bundle="$work/no-ca"
    : >"$ca_bundle"
fi

# The Dockerfile's own BASE_IMAGE unless one is given (e.g. a registry's debian:bookworm-slim).
build() {
    podman build --file "$dockerfile" --secret "id=host-ca,src=$ca_bundle" \
        ${BASE_IMAGE:+--build-arg "BASE_IMAGE=$BASE_IMAGE"} \
        --build-arg "VERSION=$version" "$@" "$context"
}

tag="$image:$version$suffix"
build --target runtime --tag "$tag" --tag "$image:latest$suffix"
mkdir -p "$dist"
archive="$dist/modelserve-$variant.oci.tar"
rm -f "$archive"
podman save --quiet --format oci-archive --output "$archive" "$tag"
if [ "$variant" = cpu ]; then
    # Only the SBOM file comes out of this stage; the build reuses the runtime build's layers.
    build --target sbom --output "type=local,dest=$work/sbom" --iidfile "$work/sbom.iid"
    mv "$work/sbom/modelserve-cpu.sbom.json" "$dist/modelserve-cpu.sbom.json"
    # podman also commits the one-file stage as an untagged image: nothing needs it.
    podman rmi "$(cat "$work/sbom.iid")" >/dev/null
fi

size="$(podman image inspect --format '{{.Size}}' "$tag")"
user="$(podman image inspect --format '{{.Config.User}}' "$tag")"
echo "built $tag (also $image:latest$suffix): $((size / 1000000)) MB, user $user"
echo "wrote $archive ($(($(stat -c %s "$archive") / 1000000)) MB)"
if [ "$variant" = cpu ]; then echo "wrote $dist/modelserve-cpu.sbom.json"; fi
