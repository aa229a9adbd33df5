#!/usr/bin/env bash
# Runs on the GPU machine from the repository root once every part of .gpu/v34 was copied to
# /tmp/acc34/ and vLLM 0.26's wheels (.gpu/w6) to /tmp/w6/: unpacks vLLM 0.34.0 with torch 2.14.0,
# triton 3.8.0, NCCL 2.30.7 and what 0.34 imports beyond 0.26 into /tmp/site34 (ahead of the
# machine's torch 2.11 on PYTHONPATH), installs .gpu/w6 (fastapi, uvicorn, …) into /tmp/site,
# writes the model folders and /tmp/vllm34-env.sh.
set -euo pipefail
bin=.gpu/v34/bin
if [ ! -f /tmp/site34/vllm/__init__.py ]; then
  n=$(ls /tmp/acc34/part.* | wc -l); want=$(cat $bin/parts)
  [ "$n" = "$want" ] || { echo "have $n of $want parts; copy the rest" >&2; exit 1; }
  cat /tmp/acc34/part.* > /tmp/site34.tar.zst
  [ "$(sha256sum /tmp/site34.tar.zst | cut -d' ' -f1)" = "$(cat $bin/sha256)" ] || { echo "archive does not match; copy the parts again" >&2; exit 1; }
  mkdir -p /tmp/site34
  if command -v zstd >/dev/null; then zstd -dc --long=30 -q /tmp/site34.tar.zst | tar x -C /tmp/site34
  else  # the machine has no zstd: the Python binding, from the bundle
    python3 -m pip install -q --no-index --no-deps --target /tmp/zstd $bin/zstandard-*.whl
    PYTHONPATH=/tmp/zstd python3 -c "
import sys, zstandard
with open('/tmp/site34.tar.zst', 'rb') as f:
    zstandard.ZstdDecompressor(max_window_size=2**30).copy_stream(f, sys.stdout.buffer, write_size=1 << 24)" \
      | tar x -C /tmp/site34
  fi
  rm -f /tmp/site34.tar.zst
fi
if [ ! -d /tmp/site/fastapi ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/w6/*.whl
fi
# vLLM 0.26's flashinfer 0.6.14 lacks what 0.34's warm-up calls (0.34 pins 0.7.3, which would be
# two more parts): without it vLLM uses its own kernels
if [ -d /tmp/site/flashinfer ]; then mkdir -p /tmp/off && mv /tmp/site/flashinfer /tmp/site/flashinfer_python-*.dist-info /tmp/off/; fi
python3 .gpu/bin/make-model.py /tmp/models >/dev/null
cat > /tmp/vllm34-env.sh <<'ENV'
# the CUTLASS DSL's packages are put on sys.path by a .pth file, which a --target folder does not run
export PYTHONPATH=/tmp/site34/nvidia_cutlass_dsl/dsl_packages:/tmp/site34:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export VLLM_USE_FLASHINFER_SAMPLER=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
ENV
. /tmp/vllm34-env.sh
python3 -c "import vllm, torch, cutlass; print('vllm', vllm.__version__, 'torch', torch.__version__, 'gpus', torch.cuda.device_count())"
