"""A fake `vllm serve` that floods its output, then serves like a ready engine.

Used as LLM_SUPERVISOR_ENGINE_COMMAND by benchmarks/overhead.py to time log ingestion through
the daemon end to end. It writes BENCH_CHATTY_LINES run-time lines as fast as the pipe takes
them (a full pipe blocks it, so it can only finish once the daemon has read all but the last
pipe buffer), then the KV-cache facts, then the ready lines, and answers /health, /v1/models,
/metrics and completions. Times go to the JSON file named by BENCH_CHATTY_STAMP.

    python benchmarks/chatty_engine.py MODEL --host H --port P [any vllm flags, ignored]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _chatter import FINAL_FACTS, READY, STARTUP, runtime_lines  # noqa: E402

KV_TOKENS = 123_456  # an unusual number: the daemon reporting it proves it parsed the end


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-model-len", type=int, default=10000)
    ap.add_argument("--served-model-name", default=None)
    args, _ = ap.parse_known_args()
    count = int(os.environ.get("BENCH_CHATTY_LINES", "500000"))
    stamp = os.environ.get("BENCH_CHATTY_STAMP")
    name = args.served_model_name or args.model
    ctx = args.max_model_len

    out = sys.stdout
    out.write("\n".join(STARTUP) + "\n")
    out.flush()
    t_start = time.time()
    batch: list[str] = []
    for line in runtime_lines(count):
        batch.append(line)
        if len(batch) == 2000:
            out.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        out.write("\n".join(batch) + "\n")
    out.write("\n".join(f.format(tokens=KV_TOKENS, ctx=ctx, conc=KV_TOKENS / ctx) for f in FINAL_FACTS) + "\n")
    out.flush()
    t_end = time.time()
    if stamp:
        Path(stamp).write_text(json.dumps({"start": t_start, "end": t_end, "lines": count}))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:  # quiet: the flood is over
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, b"")
            elif self.path == "/v1/models":
                self._send(200, json.dumps({"object": "list", "data": [{"id": name, "object": "model"}]}).encode())
            elif self.path == "/metrics":
                text = (f'vllm:num_requests_running{{engine="0",model_name="{name}"}} 0.0\n'
                        f'vllm:num_requests_waiting{{engine="0",model_name="{name}"}} 0.0\n'
                        f'vllm:cache_config_info{{block_size="16",engine="0",kv_cache_max_concurrency="{KV_TOKENS / ctx:.4f}",'
                        f'kv_cache_size_tokens="{KV_TOKENS}",num_gpu_blocks="{KV_TOKENS // 16}"}} 1.0\n')
                self._send(200, text.encode(), "text/plain; version=0.0.4")
            elif self.path == "/version":
                self._send(200, b'{"version": "0.26.0"}')
            else:
                self._send(404, b'{"detail": "Not Found"}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                body = {}
            chat = "chat" in self.path
            piece = {"index": 0, "finish_reason": "length"}
            piece.update({"message": {"content": "ok"}} if chat else {"text": "ok"})
            usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
            if body.get("stream"):
                delta = {"index": 0, "delta": {"content": "ok"}} if chat else {"index": 0, "text": "ok"}
                data = (f"data: {json.dumps({'choices': [delta]})}\n\n"
                        f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n")
                self._send(200, data.encode(), "text/event-stream")
            else:
                self._send(200, json.dumps({"id": "x", "object": "chat.completion" if chat else "text_completion",
                                            "model": name, "choices": [piece], "usage": usage}).encode())

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    out.write("\n".join(line.format(host=args.host, port=args.port) for line in READY) + "\n")
    out.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
