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
# 3. the console's front-end files build/image/node_modules: asciinema-player's bundle
#    and noVNC's core/ and vendor/ modules, copied from ./node_modules (npm ci on the
#    build machine, pinned by package-lock.json) with their licences; no npm in the image;
# 4. buildah bud: the image build itself needs no network (pip --no-index).
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
mkdir -p "$CACHE"

if [ ! -s "$base_tar" ]; then
  say "making the Debian base ($SUITE: $packages)"
  mmdebstrap --quiet "${mm_opts[@]}" --format=tar "$SUITE" "$base_tar.part.$$" ${MIRROR:+"$MIRROR"}
  mv "$base_tar.part.$$" "$base_tar"
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
# hoshu's wheel is built from a private copy of what goes into it (pyproject.toml's
# packages), so nothing else running in this tree (setuptools' build/lib, a test run's
# coverage files and byte-code caches) can change files under it while it is copied or built
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
read -r -a packages_dirs < <("$PYTHON" - <<'PY'
import tomllib
inc = tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["packages"]["find"]["include"]
print(" ".join(sorted({p.rstrip("*").split(".")[0] for p in inc})))
PY
)
tar --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md "${packages_dirs[@]}" \
  | tar -xf - -C "$src"
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$wheels" "$src"
hoshu_wheel=$(ls "$wheels"/hoshu-*.whl)
# Builds on one machine share the cache: the wheels are downloaded into a private
# folder, checked, and moved into place in one step, under a lock.
exec 9>"$CACHE/.wheels.lock"
flock 9
if [ ! -f "$deps/.complete" ] || ! "$PYTHON" - "$deps" <<'PY'
import sys, zipfile, pathlib
bad = [w.name for w in pathlib.Path(sys.argv[1]).glob("*.whl") if zipfile.ZipFile(w).testzip() is not None]
sys.exit(1 if bad else 0)
PY
then
  platforms=()
  for p in manylinux_2_36 manylinux_2_34 manylinux_2_28 manylinux_2_26 manylinux_2_17 \
           manylinux2014 manylinux_2_5 manylinux1; do
    platforms+=(--platform "${p}_x86_64")
  done
  part="$deps.part.$$"
  rm -rf "$part" && mkdir -p "$part"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$part" \
    --only-binary=:all: "${platforms[@]}" --python-version 3.11 --implementation cp \
    --abi cp311 --abi abi3 --abi none -c requirements.lock \
    "$hoshu_wheel[broker,azure]" "pip==$PIP_VERSION"
  rm -f "$part"/hoshu-*.whl
  "$PYTHON" -c 'import sys, zipfile, pathlib; [zipfile.ZipFile(w).testzip() for w in pathlib.Path(sys.argv[1]).glob("*.whl")]' "$part"
  touch "$part/.complete"
  rm -rf "$deps" && mv "$part" "$deps"
fi
cp "$deps"/*.whl "$wheels"/

say "console front-end files build/image/node_modules (pinned by package-lock.json)"
front=build/image/node_modules
rm -rf "$front" && mkdir -p "$front/asciinema-player/dist/bundle" "$front/@novnc/novnc"
for f in node_modules/asciinema-player/package.json node_modules/@novnc/novnc/package.json; do
  [ -f "$f" ] || { echo "missing $f: run npm ci --ignore-scripts first (./run does)" >&2; exit 1; }
done
cp node_modules/asciinema-player/{LICENSE,package.json} "$front/asciinema-player/"
cp node_modules/asciinema-player/dist/bundle/asciinema-player.{min.js,css} \
  "$front/asciinema-player/dist/bundle/"
cp -r node_modules/@novnc/novnc/{LICENSE.txt,package.json,core,vendor} "$front/@novnc/novnc/"

say "buildah bud -> $TAG"
buildah "${BFLAGS[@]}" bud --quiet --format docker --isolation chroot \
  --build-arg "BASE=$base_image" -f Containerfile -t "$TAG" .
say "built $TAG"
