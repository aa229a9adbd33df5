"""A misbehaving stand-in for `vllm serve MODEL --host H --port P …` (stdlib only).

It serves what the daemon asks of an engine (/health, /v1/models, /v1/chat/completions,
/v1/completions, /metrics) and, by FAKE_ENGINE_MODE, misbehaves on its output:

  normal        a few vLLM-like lines, then serves
  close_stdout  closes fd 1 and 2 right away, then serves on (output gone, process alive)
  big_line      FAKE_ENGINE_BIG_MB (default 5) megabytes with no newline, then normal lines
  flood         serves; from the first generation request on, prints FAKE_ENGINE_LINES
                (default 1e6) lines as fast as it can, then "flood done"

It writes its pid to $FAKE_ENGINE_PIDFILE when set (appending: one line per launch).

FAKE_ENGINE_CHILD=1 forks a child that stays (like EngineCore) and holds every descriptor the
engine has, duplicated; with FAKE_ENGINE_CHILD_IGNORES_HUP=1 it ignores SIGHUP too. Its pid goes
to the pid file as `child PID`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _opt(argv: list[str], name: str, default: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # stderr may be closed
        return

    def _send(self, code: int, body: dict | str, ctype: str = "application/json") -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            self._send(200, "", "text/plain")
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": SERVED, "object": "model"}]})
        elif self.path == "/metrics":
            self._send(200, "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\n", "text/plain")
        else:
            self._send(404, {"detail": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path in ("/v1/chat/completions", "/v1/completions"):
            start_flood()
            self._send(200, {"id": "x", "object": "chat.completion", "model": SERVED,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                                          "text": "Hi", "finish_reason": "length"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        else:
            self._send(404, {"detail": "not found"})


def say(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def flood(lines: int) -> None:
    line = "(APIServer pid=%d) INFO 01-01 00:00:00 [loggers.py:123] Engine 000: Avg prompt throughput: 0.0 tokens/s\n" % os.getpid()
    block = line * 1000
    out = sys.stdout.buffer
    for _ in range(lines // 1000):
        out.write(block.encode())
    out.write(b"flood done\n")
    out.flush()


SERVED = "fake"
_flood_started = threading.Event()


def start_flood() -> None:
    """In flood mode, the first request (the daemon's smoke request) sets the flood off, so it
    runs while the daemon is ready and serving /status."""
    if os.environ.get("FAKE_ENGINE_MODE") == "flood" and not _flood_started.is_set():
        _flood_started.set()
        lines = int(float(os.environ.get("FAKE_ENGINE_LINES", "1e6")))
        threading.Thread(target=flood, args=(lines,), daemon=True).start()


def start_child() -> None:
    """A child that outlives nothing on purpose: it holds a copy of every descriptor it got and
    sleeps; only a signal ends it."""
    pid = os.fork()
    if pid:
        if os.environ.get("FAKE_ENGINE_PIDFILE"):
            with open(os.environ["FAKE_ENGINE_PIDFILE"], "a") as fh:
                fh.write(f"child {pid}\n")
        return
    if os.environ.get("FAKE_ENGINE_CHILD_IGNORES_HUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for name in os.listdir("/proc/self/fd"):
        try:
            os.dup(int(name))
        except OSError:
            pass
    while True:
        time.sleep(1)


def main() -> int:
    global SERVED
    argv = sys.argv[1:]
    mode = os.environ.get("FAKE_ENGINE_MODE", "normal")
    SERVED = _opt(argv, "--served-model-name", argv[0] if argv else "fake")
    host, port = _opt(argv, "--host", "127.0.0.1"), int(_opt(argv, "--port", "8000"))
    if os.environ.get("FAKE_ENGINE_PIDFILE"):
        with open(os.environ["FAKE_ENGINE_PIDFILE"], "a") as fh:
            fh.write(f"{os.getpid()}\n")
    if os.environ.get("FAKE_ENGINE_CHILD"):
        start_child()
    if mode == "close_stdout":
        say("fake engine: closing stdout and stderr now\n")
        os.close(1)
        os.close(2)
    elif mode == "big_line":
        mb = float(os.environ.get("FAKE_ENGINE_BIG_MB", "5"))
        chunk = "x" * (1 << 20)
        for _ in range(int(mb)):
            say(chunk)
        say("\n")
    if mode != "close_stdout":
        say("INFO 01-01 00:00:00 [api_server.py:1] vLLM API server version 0.0.0-fake\n")
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    if mode != "close_stdout":
        say(f"INFO:     Uvicorn running on http://{host}:{port} (Press CTRL+C to quit)\n")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
