"""OpenAI-compatible request checks and response bodies, shaped like vLLM 0.26's. Pure."""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

WORDS = ("This is a simulated reply from the llm-supervisor vLLM simulator; no GPU computed it, "
         "and every token arrives at the configured rate.").split()


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "BadRequestError", param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


def token_text(index: int) -> str:
    word = WORDS[index % len(WORDS)]
    return word if index == 0 else " " + word


def count_text_tokens(text: str) -> int:
    """About four characters per token, as for English with a BPE vocabulary."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


@dataclass
class GenRequest:
    kind: str  # "chat" or "completion"
    model: str
    prompt_tokens: int
    planned: int
    finish_reason: str
    stream: bool
    include_usage: bool
    request_id: str
    created: int


def parse(kind: str, body: Any, served: tuple[str, ...], max_model_len: int, default_tokens: int) -> GenRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "Expected a JSON object as the request body.")
    model = body.get("model") or served[0]
    if model not in served:
        raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "[{'type': 'missing', 'loc': ('body', 'messages'), 'msg': 'Field required'}]")
        prompt = 3 + sum(4 + count_text_tokens(_content_text(m.get("content"))) for m in messages if isinstance(m, dict))
    else:
        raw = body.get("prompt")
        if raw is None:
            raise ApiError(400, "[{'type': 'missing', 'loc': ('body', 'prompt'), 'msg': 'Field required'}]")
        if isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
            prompt = len(raw)
        elif isinstance(raw, list):
            prompt = sum(count_text_tokens(str(p)) for p in raw)
        else:
            prompt = count_text_tokens(str(raw))
        prompt = max(1, prompt)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ApiError(400, f"max_tokens must be at least 1, got {limit}.", param="max_tokens")
    if prompt >= max_model_len:
        raise ApiError(400, f"This model's maximum context length is {max_model_len} tokens. However, your request "
                       f"has {prompt} input tokens. Please reduce the length of the input messages.")
    if limit is not None and prompt + limit > max_model_len:
        raise ApiError(400, f"'max_tokens' or 'max_completion_tokens' is too large: {limit}. This model's maximum "
                       f"context length is {max_model_len} tokens and your request has {prompt} input tokens "
                       f"({limit} > {max_model_len} - {prompt}).", param="max_tokens")
    room = max_model_len - prompt
    if limit is not None:
        planned, reason = limit, "length"
    else:
        planned, reason = min(default_tokens, room), "stop"
        if planned == room:
            reason = "length"
    min_tokens = body.get("min_tokens")
    if isinstance(min_tokens, int) and min_tokens > planned:
        planned = min(min_tokens, room)
    opts = body.get("stream_options") or {}
    prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
    return GenRequest(kind, model, prompt, planned, reason, bool(body.get("stream")),
                      bool(isinstance(opts, dict) and opts.get("include_usage")), prefix + uuid.uuid4().hex,
                      int(time.time()))


def usage(req: GenRequest, generated: int) -> dict[str, Any]:
    return {"prompt_tokens": req.prompt_tokens, "total_tokens": req.prompt_tokens + generated,
            "completion_tokens": generated, "prompt_tokens_details": None}


def full_response(req: GenRequest, generated: int, finish: str) -> dict[str, Any]:
    text = "".join(token_text(i) for i in range(generated))
    if req.kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None, "annotations": None, "audio": None,
                        "function_call": None, "tool_calls": [], "reasoning_content": None},
            "logprobs": None, "finish_reason": finish, "stop_reason": None, "token_ids": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None,
                  "token_ids": None, "prompt_logprobs": None, "prompt_token_ids": None}
        obj = "text_completion"
    return {"id": req.request_id, "object": obj, "created": req.created, "model": req.model, "choices": [choice],
            "service_tier": None, "system_fingerprint": None, "usage": usage(req, generated),
            "prompt_logprobs": None, "prompt_token_ids": None, "kv_transfer_params": None}


def _chunk(req: GenRequest, choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
    obj = "chat.completion.chunk" if req.kind == "chat" else "text_completion"
    data: dict[str, Any] = {"id": req.request_id, "object": obj, "created": req.created, "model": req.model,
                            "choices": choices}
    if extra:
        data.update(extra)
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def first_chunk(req: GenRequest) -> bytes:
    if req.kind != "chat":
        return b""
    return _chunk(req, [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}])


_TEMPLATES: dict[str, tuple[bytes, bytes]] = {}


def token_chunk(req: GenRequest, index: int, finish: str | None) -> bytes:
    text = token_text(index)
    if finish is None:
        # the hot path (one chunk per token per request): a per-request template
        tpl = _TEMPLATES.get(req.request_id)
        if tpl is None:
            marker = "\x00"
            if req.kind == "chat":
                choice = {"index": 0, "delta": {"content": marker}, "logprobs": None, "finish_reason": None}
            else:
                choice = {"index": 0, "text": marker, "logprobs": None, "finish_reason": None}
            head, tail = _chunk(req, [choice]).split(json.dumps(marker).encode(), 1)
            tpl = _TEMPLATES[req.request_id] = (head, tail)
        return tpl[0] + json.dumps(text).encode() + tpl[1]
    _TEMPLATES.pop(req.request_id, None)
    if req.kind == "chat":
        choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    if finish is not None:
        choice["stop_reason"] = None
    return _chunk(req, [choice])


def forget(req: GenRequest) -> None:
    """Drop the request's chunk template (a request that ended early never sent its last chunk)."""
    _TEMPLATES.pop(req.request_id, None)


def usage_chunk(req: GenRequest, generated: int) -> bytes:
    return _chunk(req, [], {"usage": usage(req, generated)})


def error_chunk(message: str, status: int = 500, kind: str = "InternalServerError") -> bytes:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
