#!/usr/bin/env bash
# Builds the vLLM 0.34.0 bundle for the offline GPU machine (torch 2.11, no network) under .gpu/v34/:
# the packages 0.34 needs beyond vLLM 0.26's set (.gpu/w6, ../shared/gpu), unpacked for Python 3.12
# and packed as one zstd archive in parts of 58 MB (a transfer carries at most 64 MiB), with the
# installer that runs there (scripts/gpu34/install.sh). Run here, with network, from the repository
# root; needs pip and zstd. docs/validation.md ("vLLM 0.34.0 on the H200") says how to use it.
set -euo pipefail
out=.gpu/v34
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pins=(
  vllm==0.34.0 torch==2.14.0 triton==3.8.0 torchvision==0.29.0
  nvidia-nccl-cu13==2.30.7            # torch 2.14 links symbols NCCL 2.28 (the machine's) lacks
  transformers==5.22.2 tokenizers==0.23.3 orjson==3.13.0
  nvidia-cutlass-dsl==4.8.0 nvidia-cutlass-dsl-libs-base==4.8.0 nvidia-cutlass-dsl-libs-core==4.8.0
  nvidia-cutlass-dsl-libs-cu13==4.8.0 quack-kernels==0.6.5 torch-c-dlpack-ext==0.1.5  # 0.34's kernel warm-up imports them
)
# the GPU machine: CPython 3.12, glibc 2.39, x86_64
target=(--python-version 3.12 --only-binary=:all:)
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_18 manylinux_2_17 manylinux2014; do
  target+=(--platform "${p}_x86_64")
done
PIP_CONSTRAINT= PIP_FIND_LINKS= python3 -m pip download -q --no-deps -d "$stage/wheels" --index-url https://pypi.org/simple \
  "${target[@]}" --platform any "${pins[@]}" zstandard==0.25.0
PIP_CONSTRAINT= python3 -m pip install -q --no-index --no-deps --no-compile --target "$stage/site34" "${target[@]}" \
  --platform any $(ls "$stage"/wheels/*.whl | grep -v zstandard)
rm -rf "$out" && mkdir -p "$out/bin"
tar cf - -C "$stage/site34" --exclude=torch/include --exclude=__pycache__ . | zstd -12 -T0 --long=30 -q -o "$stage/site34.tar.zst"
(cd "$stage" && split -b 58000000 -d -a 2 site34.tar.zst part.)
for f in "$stage"/part.*; do n=${f##*.}; mkdir -p "$out/p$n"; mv "$f" "$out/p$n/"; done
sha256sum "$stage/site34.tar.zst" | cut -d' ' -f1 > "$out/bin/sha256"
ls -d "$out"/p* | wc -l > "$out/bin/parts"
cp "$stage"/wheels/zstandard-*.whl scripts/gpu34/install.sh "$out/bin/"
echo "$(cat "$out/bin/parts") parts in $out; carry each $out/pNN once, then $out/bin with the last"
