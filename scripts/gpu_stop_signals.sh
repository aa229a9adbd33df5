#!/usr/bin/env bash
# How long `supervisor up` takes to stop real vLLM on one SIGINT (the staged stop: vLLM's own
# shutdown) and on two (the second has the guard SIGKILL the tree at once), and what is left after.
# On the GPU machine, after `. /tmp/vllm-env.sh`:  bash scripts/gpu_stop_signals.sh OUT_DIR
set -uo pipefail
out=${1:-/tmp/stop-signals}
mkdir -p "$out"
profile=scripts/profiles/h100-qwen3-4b.yaml
now() { python3 -c 'import time; print(f"{time.monotonic():.3f}")'; }
for signals in 1 2; do
  log="$out/up-$signals-sigint.log"
  LLM_SUPERVISOR_STATE_DIR="$out/state" LLM_SUPERVISOR_API_PORT=18990 \
    python3 -m llm_supervisor up --profile "$profile" --ignore-hardware-mismatch > "$log" 2>&1 &
  pid=$!
  timeout 400 bash -c "until grep -q 'ready:' '$log'; do sleep 0.5; done" || { echo "not ready: $(tail -3 "$log")"; kill -9 $pid; continue; }
  t0=$(now)
  kill -INT $pid
  if [ "$signals" = 2 ]; then sleep 0.5; kill -INT $pid; fi
  wait $pid; rc=$?
  t1=$(now)
  left=$(pgrep -fc 'VLLM::|vllm serve' || true)
  used=$(nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits)
  echo "$signals SIGINT: exit $rc after $(python3 -c "print(round($t1 - $t0, 2))") s; engine processes left: $left; GPU memory used after: $used MiB" | tee -a "$out/summary.txt"
done
