# syntax=docker/dockerfile:1
#
# llm-supervisor on top of the official vLLM OpenAI image: the image's own Python, torch and
# vLLM stay exactly as vLLM pinned them; we add our package (with the shipped profiles) and tini.
#
#   docker build -t llm-supervisor .
#   docker run --gpus all --ipc=host --cap-add SYS_NICE --stop-timeout 45 \
#     -p 8000:8000 -p 8900:8900 -v llm-supervisor:/var/lib/llm-supervisor \
#     -e LLM_SUPERVISOR_PROFILE=4090d-qwen3-4b -e LLM_SUPERVISOR_API_TOKEN=… llm-supervisor
#
# More in docs/docker.md.

# The vLLM release this supervisor was validated against on a real GPU.
ARG VLLM_VERSION=v0.26.0
FROM vllm/vllm-openai:${VLLM_VERSION}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# tini as PID 1 reaps whatever is reparented to it and forwards SIGTERM to the daemon, which
# then stops the engine's whole process tree. The version is the base image's Ubuntu's.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# Install into vLLM's Python without changing any package already there: every installed
# distribution is pinned through a constraints file, so pip may only add what is missing (the
# build stops if one of our dependencies would need a different version). The PyPI package
# `supervisor` (supervisord, which vLLM >= 0.12 imports) is left alone: ours is `llm_supervisor`.
RUN --mount=type=bind,target=/tmp/llm-supervisor-src,rw \
    python3 -m pip list --format=freeze > /tmp/before.txt \
    && PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
       python3 -m pip install --no-cache-dir --constraint /tmp/before.txt /tmp/llm-supervisor-src \
    && python3 -m pip list --format=freeze > /tmp/after.txt \
    && if grep -vxFf /tmp/after.txt /tmp/before.txt; then \
         echo "installing llm-supervisor changed the packages listed above" >&2; exit 1; \
       fi \
    && supervisor --help > /dev/null \
    && supervisor profiles | grep -q 4090d-qwen3-4b \
    && rm -f /tmp/before.txt /tmp/after.txt

# The shipped profiles are in the package too; this copy is the folder to add your own to.
COPY llm_supervisor/data/profiles/ /etc/llm-supervisor/profiles/

# One volume at /var/lib/llm-supervisor keeps the known-good arguments, the engine logs, the
# model downloads and the compile caches (vLLM's, Triton's), so a new container starts warm.
# The API listens on all interfaces so that -p 8900 works; the daemon refuses to start on a
# non-loopback address without LLM_SUPERVISOR_API_TOKEN, which must be given at run time.
ENV LLM_SUPERVISOR_PROFILES_DIR=/etc/llm-supervisor/profiles \
    LLM_SUPERVISOR_PROFILE=4090d-qwen3-4b \
    LLM_SUPERVISOR_STATE_DIR=/var/lib/llm-supervisor \
    LLM_SUPERVISOR_API_HOST=0.0.0.0 \
    LLM_SUPERVISOR_API_PORT=8900 \
    HF_HOME=/var/lib/llm-supervisor/cache/huggingface \
    VLLM_CACHE_ROOT=/var/lib/llm-supervisor/cache/vllm \
    TRITON_CACHE_DIR=/var/lib/llm-supervisor/cache/triton \
    XDG_CACHE_HOME=/var/lib/llm-supervisor/cache

WORKDIR /var/lib/llm-supervisor

LABEL org.opencontainers.image.title="llm-supervisor" \
      org.opencontainers.image.description="vLLM's OpenAI server under a supervisor that pins, watches and recovers it" \
      org.opencontainers.image.licenses="Apache-2.0"

# 8000: vLLM's OpenAI API. 8900: the supervisor's status/admin API.
EXPOSE 8000 8900

# Healthy once vLLM has answered a real request; unhealthy while it restarts or backs off.
# A first start may download the model and compile: failures in the first 30 minutes do not count.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30m --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('LLM_SUPERVISOR_API_PORT', '8900'), timeout=4)"]

# `docker stop` sends SIGTERM; give it --stop-timeout 45 (docker's default of 10 s can cut the
# engine's shutdown short).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "supervisor"]
# Inside a container vLLM must listen on all interfaces for -p 8000 to reach it. Arguments given
# to `docker run IMAGE …` replace these: keep `--set vllm.host=0.0.0.0` when you add your own.
CMD ["up", "--set", "vllm.host=0.0.0.0"]
