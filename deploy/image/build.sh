#!/usr/bin/env bash
# Build the broker image (Containerfile) the same way everywhere: CI's deploy
# workflow, the image tests and an operator's machine.
#
#   deploy/image/build.sh TAG
#
# 1. the Debian base: mmdebstrap (variant essential, deploy/image/base-packages.txt),
#    cached as a tarball under $HOSHU_IMAGE_CACHE keyed by the package list, and
#    imported into container storage as localhost/hoshu-base:<key>;
# 2. the wheelhouse build/image/wheels: hoshu's own wheel plus every dependency as a
#    binary wheel for CPython 3.11 on x86-64 Linux, pinned by requirements.lock (the
#    dependencies are cached too, keyed by requirements.lock and pyproject.toml);
# 3. buildah bud: the image build itself needs no network (pip --no-index).
#
# Environment: HOSHU_IMAGE_CACHE (default ~/.cache/hoshu-image), HOSHU_DEBIAN_SUITE
# (bookworm), HOSHU_DEBIAN_MIRROR (Debian's default), PYTHON (the python with pip),
# BUILDAH_FLAGS (global flags such as --root/--runroot/--storage-driver).
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${1:?usage: deploy/image/build.sh TAG}
SUITE=${HOSHU_DEBIAN_SUITE:-bookworm}
MIRROR=${HOSHU_DEBIAN_MIRROR:-}
CACHE=${HOSHU_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hoshu-image}
PYTHON=${PYTHON:-python3}
PIP_VERSION=26.3  # the installer used in the build stage only (not in the image)
read -r -a BFLAGS <<<"${BUILDAH_FLAGS:-}"
T0=$SECONDS
say() { printf '==> [%3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }

packages=$(grep -v -e '^#' -e '^[[:space:]]*$' deploy/image/base-packages.txt | tr '\n' ',' | sed 's/,$//')
mm_opts=(--variant=essential --include="$packages"
         --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
         --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*'
         --dpkgopt='path-include=/usr/share/doc/*/copyright')
key=$(printf '%s\n' "$SUITE" "$MIRROR" "${mm_opts[@]}" | sha256sum | cut -c1-16)
base_tar="$CACHE/base-$SUITE-$key.tar"
base_image="localhost/hoshu-base:$SUITE-$key"

if [ ! -s "$base_tar" ]; then
  say "making the Debian base ($SUITE: $packages)"
  mkdir -p "$CACHE"
  mmdebstrap --quiet "${mm_opts[@]}" --format=tar "$SUITE" "$base_tar.part" ${MIRROR:+"$MIRROR"}
  mv "$base_tar.part" "$base_tar"
fi
if ! buildah "${BFLAGS[@]}" inspect --type image "$base_image" >/dev/null 2>&1; then
  say "importing the base as $base_image"
  ctr=$(buildah "${BFLAGS[@]}" from scratch)
  buildah "${BFLAGS[@]}" add "$ctr" "$base_tar" /
  buildah "${BFLAGS[@]}" commit --quiet --rm "$ctr" "$base_image" >/dev/null
fi

say "wheelhouse build/image/wheels"
# the dependencies' wheels are kept in the cache, keyed by the lock file and pyproject.toml
deps_key=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
deps="$CACHE/wheels-$deps_key"
wheels=build/image/wheels
rm -rf "$wheels" && mkdir -p "$wheels"
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$wheels" .
hoshu_wheel=$(ls "$wheels"/hoshu-*.whl)
if [ ! -f "$deps/.complete" ]; then
  platforms=()
  for p in manylinux_2_36 manylinux_2_34 manylinux_2_28 manylinux_2_26 manylinux_2_17 \
           manylinux2014 manylinux_2_5 manylinux1; do
    platforms+=(--platform "${p}_x86_64")
  done
  rm -rf "$deps" && mkdir -p "$deps"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$deps" \
    --only-binary=:all: "${platforms[@]}" --python-version 3.11 --implementation cp \
    --abi cp311 --abi abi3 --abi none -c requirements.lock \
    "$hoshu_wheel[broker,azure]" "pip==$PIP_VERSION"
  rm -f "$deps"/hoshu-*.whl
  touch "$deps/.complete"
fi
cp "$deps"/*.whl "$wheels"/

say "buildah bud -> $TAG"
buildah "${BFLAGS[@]}" bud --quiet --format docker --isolation chroot \
  --build-arg "BASE=$base_image" -f Containerfile -t "$TAG" .
say "built $TAG"
