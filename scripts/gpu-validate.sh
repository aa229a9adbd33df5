#!/usr/bin/env bash
# Run every GPU validation scenario (docs/validation.md) in one go and print the summary last.
#
#   bash scripts/gpu-validate.sh [OUT_DIR] [extra args for scripts/gpu_validate.py]
#
# Real run (GPU machine, after .gpu/bin/device-install.sh): `. /tmp/vllm-env.sh` first, so that
# vLLM is importable (PYTHONPATH=/tmp/site) and `vllm` is on PATH.
# VALIDATE_SIMULATE=1 runs the same scenarios against the bundled simulator on a simulated
# H100 (no GPU): use it to check this script before spending GPU time.
# VALIDATE_TIMEOUT (seconds, default 1500) bounds the whole run; each daemon lifetime also has
# its own hard limit inside the driver. VALIDATE_ARCHIVE=FILE.tar.gz packs the run's logs and
# summaries into one file (the device machine brings back only a few: put it under $OUT and
# OUT_DIR elsewhere).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${VALIDATE_OUT:-${TMPDIR:-/tmp}/gpu-validate-out}}
[ $# -gt 0 ] && shift
args=(--out "$out")
[ "${VALIDATE_SIMULATE:-0}" = 1 ] && args+=(--simulate)
[ -n "${VALIDATE_ONLY:-}" ] && args+=(--only "$VALIDATE_ONLY")
[ "${VALIDATE_IGNORE_HW:-0}" = 1 ] && args+=(--ignore-hardware-mismatch)
[ -n "${VALIDATE_ARCHIVE:-}" ] && args+=(--archive "$VALIDATE_ARCHIVE")
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
mkdir -p "$out"
timeout --signal=TERM --kill-after=30 "${VALIDATE_TIMEOUT:-1500}" "$py" scripts/gpu_validate.py "${args[@]}" "$@" 2>&1 | tee "$out/driver.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "gpu-validate: the whole run hit VALIDATE_TIMEOUT; partial results in $out" >&2
exit "$rc"
