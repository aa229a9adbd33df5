"""Secrets never leak. The engine's API key (LLM_SUPERVISOR_ENGINE_API_KEY, the env route), the
admin token (LLM_SUPERVISOR_API_TOKEN) and a token in the profile's `env:` are scanned for in
everything a user or another local user can see: the daemon's log, the engine log files, /status,
/metrics, the OpenAPI document, `status`, `plan` (text and JSON), `profiles show`, error messages,
the state files, and every `ps`-visible command line of the tree. A key given with `--set` on the
daemon's own command line is scrubbed from its /proc/PID/cmdline once it runs."""

from __future__ import annotations

import secrets
import signal
from pathlib import Path

import httpx
import psutil

from daemon_harness import DaemonRun
from hardening_utils import REPO, cli, clean_env, find_secrets, poll

KEY = "sk-SECRETKEY" + secrets.token_hex(8)
TOKEN = "tok-SECRETTOKEN" + secrets.token_hex(8)
HF = "hf_SECRETHF" + secrets.token_hex(8)
ALL = (KEY, TOKEN, HF)


def _profile(tmp: Path) -> Path:
    text = (REPO / "profiles" / "4090d-qwen3-4b.yaml").read_text()
    path = tmp / "secret-profile.yaml"
    path.write_text(text + f"env:\n  HF_TOKEN: {HF}\n  OMP_NUM_THREADS: '2'\n")
    return path


def _cmdlines(procs: list[psutil.Process]) -> dict[str, bytes]:
    out = {}
    for proc in procs:
        try:
            with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
                out[f"cmdline of {proc.pid} ({proc.name()})"] = fh.read()
        except (OSError, psutil.Error):
            pass
    return out


def test_no_secret_in_any_output(daemons, tmp_path: Path) -> None:
    profile = _profile(tmp_path)
    env = {"LLM_SUPERVISOR_API_TOKEN": TOKEN, "LLM_SUPERVISOR_ENGINE_API_KEY": KEY}
    run: DaemonRun = daemons(profile=str(profile), env=env).start()
    status = run.wait_ready()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    engine = f"http://127.0.0.1:{run.engine_port}"

    # the engine really got the key, by environment: it refuses requests without it
    assert httpx.get(f"{engine}/v1/models", timeout=5, trust_env=False).status_code == 401
    assert httpx.get(f"{engine}/v1/models", headers={"Authorization": f"Bearer {KEY}"},
                     timeout=5, trust_env=False).status_code == 200
    assert "VLLM_API_KEY" in psutil.Process(status["pid"]).environ()
    # ... and nothing it does not need: neither the admin token nor the supervisor's copy of the key
    for proc in run.engine_processes():
        leaked = [k for k, v in proc.environ().items() if TOKEN in v or (KEY in v and k != "VLLM_API_KEY")]
        assert leaked == [], leaked

    seen: dict[str, str | bytes] = {}
    # everything `ps` shows: the daemon, its guard, every engine process
    seen.update(_cmdlines(run.tree()))
    # the REST API, read and admin routes, with wrong and right tokens
    for path in ("/status", "/metrics", "/healthz", "/readyz", "/openapi.json", "/docs"):
        seen[path] = run.get(path).text
    seen["POST /restart wrong token"] = run.post("/restart", headers={"Authorization": f"Bearer {TOKEN}x"}).text
    seen["POST /restart no token"] = run.post("/restart").text
    seen["POST /restart"] = run.post("/restart", headers=auth).text
    run.wait_status(lambda s: s["state"] == "ready" and s["attempt"] == 2, what="ready after the restart")
    seen["/status after restart"] = run.get("/status").text
    # the command line tools, with the same environment
    cli_env = clean_env(tmp_path, LLM_SUPERVISOR_API_PORT=str(run.api_port), **env)
    for label, args in {
        "status": ["status"], "status --json": ["status", "--json"],
        "plan": ["plan", "--profile", str(profile), "--simulate"],
        "plan --json": ["plan", "--profile", str(profile), "--simulate", "--json"],
        "profiles show": ["profiles", "show", str(profile)],
        "profiles show --set": ["profiles", "show", str(profile), "--set", f"vllm.api_key={KEY}"],
        "bad --set next to the key": ["plan", "--profile", str(profile), "--set", f"vllm.api_key={KEY}",
                                      "--set", "vllm.port=abc"],
        "secret in the wrong place": ["plan", "--profile", str(profile), "--set", f"vllm.api_key.x={KEY}"],
        "bad secret type": ["plan", "--profile", str(profile), "--set", "env.HF_TOKEN=[1]"],
        "key as extra arg": ["plan", "--profile", str(profile), "--set", f"vllm.extra_args=--api-key={KEY}"],
    }.items():
        result = cli(args, cli_env)
        seen[f"`{label}` stdout"], seen[f"`{label}` stderr"] = result.stdout, result.stderr
    assert seen["`plan --json` stdout"].count('"VLLM_API_KEY": "***"') == 1
    assert seen["`bad --set next to the key` stderr"].startswith("error: --set vllm.port: ")
    wrong = cli(["restart"], {**cli_env, "LLM_SUPERVISOR_API_TOKEN": TOKEN + "wrong"})
    assert wrong.returncode == 1
    seen["`restart` wrong token"] = wrong.stdout + wrong.stderr

    run.signal(signal.SIGTERM)
    assert run.wait_exit(30) == 0
    # what the daemon wrote: its own log, the engine log files, the state files
    seen["daemon stderr"], seen["daemon stdout"] = run.stderr(), run.stdout_path.read_text()
    for path in run.state_dir.rglob("*"):
        if path.is_file() and "cache" not in path.parts:
            seen[str(path.relative_to(run.state_dir))] = path.read_bytes()
    assert any(name.startswith("logs/") for name in seen) and "state.json" in seen

    assert find_secrets(ALL, seen) == []
    # the scan itself works: the secrets are where they belong
    assert find_secrets([KEY], {"engine environ": str(run.env)}) != []


def test_api_key_on_the_daemon_command_line_is_scrubbed_from_ps(daemons, tmp_path: Path) -> None:
    run: DaemonRun = daemons(sets=[f"vllm.api_key={KEY}"]).start()
    status = run.wait_ready()
    assert find_secrets([KEY], _cmdlines(run.tree())) == []
    with open(f"/proc/{run.pid}/cmdline", "rb") as fh:
        argv = fh.read().split(b"\0")
    assert b"vllm.api_key=" + b"*" * len(KEY) in argv
    assert "visible in `ps` while the daemon starts" in run.stderr()
    # the key still works: the engine wants it and the daemon's smoke request carried it
    assert httpx.get(f"http://127.0.0.1:{run.engine_port}/v1/models", timeout=5, trust_env=False).status_code == 401
    assert status["argv"] and KEY not in str(status)
    run.signal(signal.SIGTERM)
    assert run.wait_exit(30) == 0
    assert find_secrets([KEY], {"stderr": run.stderr()}) == []
    poll(lambda: run.tree() == [], 10, what="nothing left")


def test_mask_secret_args_touches_only_secret_values() -> None:
    from llm_supervisor.cli import mask_secret_args

    args = [b"python3.11", b"-m", b"llm_supervisor", b"up", b"--set", b"vllm.api_key=1", b"--set=env.HF_TOKEN=hf_x",
            b"--set", b"vllm.port=1", b"--token", b"abc", b"--api-key=zz", b"--set", b"env.MY_PASSWORD=", b"--token"]
    masked = mask_secret_args(args)
    assert masked == [b"python3.11", b"-m", b"llm_supervisor", b"up", b"--set", b"vllm.api_key=*",
                      b"--set=env.HF_TOKEN=****", b"--set", b"vllm.port=1", b"--token", b"***", b"--api-key=**",
                      b"--set", b"env.MY_PASSWORD=", b"--token"]
    assert [len(a) for a in masked] == [len(a) for a in args]  # the argv area keeps its layout


def test_secrets_known_by_value_never_leak_through_the_engines_own_errors(daemons, tmp_path: Path) -> None:
    """vLLM's argparse error echoes a secret passed in `extra_args`; `env` values named DB_PASS or
    MY_PASSWD say nothing to a list of words. The daemon knows the values (config/redaction.py) and
    masks them wherever they come back: its log, the engine log file, state.json, /status,
    /metrics, the page, `status`, `plan`."""
    extra = "xa-" + secrets.token_hex(10)
    db_pass, passwd, api_key = ("db-" + secrets.token_hex(8), "pw-" + secrets.token_hex(8),
                                "key-" + secrets.token_hex(8))
    text = (REPO / "profiles" / "4090d-qwen3-4b.yaml").read_text()
    text = text.replace('extra_args: ["--max-log-len", "100"]', "")
    profile = tmp_path / "p.yaml"
    profile.write_text(text + f"env:\n  DB_PASS: {db_pass}\n  MY_PASSWD: {passwd}\n")
    sets = [f"vllm.extra_args=--db-password {extra}"]
    env = {"LLM_SUPERVISOR_API_TOKEN": TOKEN, "LLM_SUPERVISOR_FAILED_LINGER_S": "60",
           "LLM_SUPERVISOR_ENGINE_API_KEY": api_key}
    everything = (extra, db_pass, passwd, api_key, TOKEN)
    run: DaemonRun = daemons(profile=str(profile), sets=sets, env=env).start()
    status = run.wait_state("failed")
    # the engine did say it (its argparse error), and the daemon understood why it failed
    assert any("unrecognized arguments" in h.get("reason", "") + str(h.get("failure"))
               for h in status["history"]), status["history"]
    seen: dict[str, str | bytes] = {}
    for path in ("/status", "/metrics", "/", "/readyz"):
        seen[path] = run.get(path).text
    cli_env = clean_env(tmp_path, LLM_SUPERVISOR_API_PORT=str(run.api_port), **env)
    for label, args in {"status": ["status"], "status --json": ["status", "--json"],
                        "plan": ["plan", "--profile", str(profile), "--simulate", "--set", sets[0]],
                        "plan --json": ["plan", "--profile", str(profile), "--simulate", "--json", "--set", sets[0]],
                        "profiles show": ["profiles", "show", str(profile)]}.items():
        result = cli(args, cli_env)
        seen[f"`{label}`"] = result.stdout + result.stderr
    run.signal(signal.SIGTERM)
    assert run.wait_exit(30) == 3
    seen["daemon stderr"] = run.stderr()
    for path in run.state_dir.rglob("*"):
        if path.is_file() and "cache" not in path.parts:
            seen[str(path.relative_to(run.state_dir))] = path.read_bytes()
    assert "unrecognized arguments: --db-password ***" in seen["logs/4090d-qwen3-4b.log"].decode()
    assert find_secrets(everything, seen) == []
