#!/usr/bin/env bash
# The device machine takes at most 64 MiB per call, the checkout included; the GPU recipe's vLLM
# wheel parts (.gpu/w1 … .gpu/w5, ~58 MB each) no longer fit beside a checkout of more than ~6 MiB.
#
#   here:   bash scripts/gpu-halves.sh split   → .gpu/h1-a, .gpu/h1-b, … .gpu/h5-b (~29 MB each)
#   there:  one call per half, carrying it:  mkdir -p /tmp/acch && cp .gpu/hN-x/* /tmp/acch/
#           then:  bash scripts/gpu-halves.sh join   → /tmp/acc/vpart.NN, as the recipe's five
#           transfers leave them; then `bash .gpu/bin/device-install.sh` as the recipe says
set -euo pipefail
case "${1:-split}" in
  split)
    for dir in .gpu/w[1-5]; do
      i=${dir#.gpu/w}
      for part in "$dir"/vpart.*; do
        name=$(basename "$part"); size=$(stat -c %s "$part"); half=$(( (size + 1) / 2 ))
        mkdir -p ".gpu/h$i-a" ".gpu/h$i-b"
        head -c "$half" "$part" > ".gpu/h$i-a/$name.a"
        tail -c +"$((half + 1))" "$part" > ".gpu/h$i-b/$name.b"
      done
    done
    ls -d .gpu/h*-[ab]
    ;;
  join)
    mkdir -p /tmp/acc
    for a in /tmp/acch/vpart.*.a; do
      name=$(basename "$a" .a); b=/tmp/acch/$name.b
      [ -f "$b" ] || { echo "missing $b: copy .gpu/h*-b too" >&2; exit 1; }
      cat "$a" "$b" > "/tmp/acc/$name"
    done
    ls /tmp/acc
    ;;
  *) echo "usage: $0 split|join" >&2; exit 2 ;;
esac
