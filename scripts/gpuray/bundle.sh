#!/usr/bin/env bash
# Builds the Ray bundle for the offline GPU machine (CPython 3.12, no network; the GPU recipe does
# not install Ray) under .gpu/ray/: Ray's wheel in two parts (a transfer carries at most 64 MiB)
# with click and msgpack, and the installer that runs there (scripts/gpuray/install.sh). Run here,
# with network, from the repository root. docs/validation.md ("Multi-GPU") says how to use it.
set -euo pipefail
version=${RAY_VERSION:-2.60.0}
out=.gpu/ray
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
PIP_CONSTRAINT= python3 -m pip download -q --no-deps -d "$stage" --python-version 3.12 --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform any "ray==$version" click msgpack
rm -rf "$out" && mkdir -p "$out/p0" "$out/p1" "$out/bin"
wheel=$(ls "$stage"/ray-*.whl)
(cd "$out" && split -b 40000000 -d -a 1 "$wheel" part.)
[ ! -e "$out/part.2" ] || { echo "$(basename "$wheel") needs more than two parts; install.sh joins two" >&2; exit 1; }
mv "$out/part.0" "$out/p0/" && mv "$out/part.1" "$out/p1/"
cp "$stage"/click-*.whl "$stage"/msgpack-*.whl "$out/p1/"
basename "$wheel" > "$out/bin/name"
sha256sum "$wheel" | cut -d' ' -f1 > "$out/bin/sha256"
cp scripts/gpuray/install.sh "$out/bin/"
echo "carry .gpu/ray/p0 (copy it to /tmp/acc-ray/), then .gpu/ray/p1 with .gpu/ray/bin and run .gpu/ray/bin/install.sh"
