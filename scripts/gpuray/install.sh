#!/usr/bin/env bash
# Runs on the GPU machine from the repository root, after vLLM's install (the GPU recipe's
# device-install.sh, or scripts/gpu34/install.sh: Ray imports jsonschema, aiohttp and more from
# there), once .gpu/ray/p0 was copied to /tmp/acc-ray/ and with .gpu/ray/p1 and .gpu/ray/bin
# present: installs Ray into /tmp/raysite (its own folder: `pip --target` does not replace an
# existing bin/) and writes /tmp/ray-env.sh, to source after the vLLM env file (`ray` on PATH,
# importable by vLLM and by Ray's workers).
set -euo pipefail
bin=.gpu/ray/bin
name=$(cat $bin/name)
if [ ! -f /tmp/raysite/ray/__init__.py ]; then
  cat /tmp/acc-ray/part.0 .gpu/ray/p1/part.1 > "/tmp/$name"
  [ "$(sha256sum "/tmp/$name" | cut -d' ' -f1)" = "$(cat $bin/sha256)" ] || { echo "Ray wheel does not match; copy the parts again" >&2; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/raysite "/tmp/$name" .gpu/ray/p1/*.whl
fi
cat > /tmp/ray-env.sh <<'ENV'
export PYTHONPATH=/tmp/raysite${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/raysite/bin:$PATH
ENV
for env in /tmp/vllm-env.sh /tmp/vllm34-env.sh; do
  if [ -f "$env" ]; then . "$env"; break; fi
done
. /tmp/ray-env.sh
python3 -c "import ray; print('ray', ray.__version__)"
