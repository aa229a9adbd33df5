"""The one redaction (config/redaction.py): which values are secrets, and the sinks that use it
(the daemon's log filter, the state file, /status)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import SecretStr

from llm_supervisor.config.loader import load_profile
from llm_supervisor.config.redaction import REDACTED, Redactor, is_secret_name, looks_like_token
from llm_supervisor.config.settings import Settings
from llm_supervisor.runtime.service import RedactingFilter
from llm_supervisor.store.state import StateStore

PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def test_secret_names_and_shapes() -> None:
    for name in ("HF_TOKEN", "VLLM_API_KEY", "DB_PASS", "MY_PASSWD", "db-password", "AWS_SECRET_ACCESS_KEY",
                 "PGPASSWORD", "GOOGLE_CREDENTIALS", "SSL_PRIVATE"):
        assert is_secret_name(name), name
    for name in ("PWD", "OLDPWD", "BYPASS_CACHE", "NCCL_P2P_DISABLE", "COMPASS_DIR", "CUDA_VISIBLE_DEVICES"):
        assert not is_secret_name(name), name
    assert looks_like_token("hf_" + "a" * 30) and looks_like_token("sk-" + "x" * 40)
    assert not looks_like_token("/usr/local/cuda") and not looks_like_token("1")


def test_from_inputs_knows_every_value_it_was_given(tmp_path: Path) -> None:
    extra, key, token, db, hf = "xa-0123456789", "key-0123456789", "tok-0123456789abcdef", "db-0123456789", "hf_" + "h" * 30
    profile = load_profile("4090d-qwen3-4b", PROFILES, overrides=[
        f"vllm.api_key={key}", f"vllm.extra_args=--foo 1 --db-password {extra}", f"env.DB_PASS={db}",
        "env.NCCL_P2P_DISABLE='1'", f"env.SOMETHING={hf}"])
    settings = Settings(state_dir=tmp_path, api_token=SecretStr(token))
    redactor = Redactor.from_inputs(settings, profile, {"HF_TOKEN": "hf-home-token-value", "PATH": "/usr/bin"})
    text = f"unrecognized arguments: --db-password {extra}; key {key}; {token}; {db}; {hf}; hf-home-token-value"
    assert redactor.text(text) == f"unrecognized arguments: --db-password {REDACTED}; key {REDACTED}; " + \
        f"{REDACTED}; {REDACTED}; {REDACTED}; {REDACTED}"
    assert redactor.text("NCCL_P2P_DISABLE=1 /usr/bin") == "NCCL_P2P_DISABLE=1 /usr/bin"  # not secrets
    assert redactor.argv(["vllm", "serve", "--db-password", extra, "--foo", "1"]) == \
        ["vllm", "serve", "--db-password", REDACTED, "--foo", "1"]
    assert redactor.env({"DB_PASS": db, "SOMETHING": hf, "N": "1"}) == {"DB_PASS": REDACTED, "SOMETHING": REDACTED, "N": "1"}
    assert repr(redactor) == "Redactor(6 secrets)"  # how many, never which


def test_the_log_filter_masks_messages_arguments_and_tracebacks() -> None:
    secret = "sw0rdfish-secret"
    record = logging.LogRecord("llm_supervisor", logging.ERROR, __file__, 1, "engine said %s", (f"--pw {secret}",), None)
    try:
        raise RuntimeError(f"boom {secret}")
    except RuntimeError as exc:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    assert RedactingFilter(Redactor([secret])).filter(record)
    text = logging.Formatter().format(record)
    assert secret not in text and "engine said --pw ***" in text and "boom ***" in text


def test_the_state_file_is_written_redacted(tmp_path: Path) -> None:
    secret = "unrecognized-secret-42"
    store = StateStore(tmp_path, Redactor([secret]))
    store.record("p@h[g]", {"event": "exit", "failure": {"message": f"unrecognized arguments: {secret}"}})
    store.save()
    text = (tmp_path / "state.json").read_text()
    assert secret not in text and "unrecognized arguments: ***" in json.loads(text)["profiles"]["p@h[g]"]["history"][0][
        "failure"]["message"]
    assert store.data["profiles"]["p@h[g]"]["history"][0]["failure"]["message"].endswith(secret)  # memory keeps it
