"""The daemon over real processes, for what is about processes: the simulator as the engine
under the guard, signals, `kill -9` of the daemon, the command line against a running daemon, and
one recovery end to end (the README's demo). Everything else about the daemon's behaviour is
tested in-process, in virtual time (test_daemon_loop.py, test_daemon_recovery.py).

Waits poll against generous deadlines: CI machines are loaded."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest

from daemon_harness import (
    DaemonRun,
    alive,
    engine_metrics_cache_info,
    history_events,
    parsed_from_log,
    port_free,
    relaunches,
    run_cli,
    wait_until,
)

NO_PLAN = "recovery.plan_first_launch=false"


def test_up_reaches_ready_reports_facts_and_sigterm_leaves_nothing(daemons) -> None:
    run: DaemonRun = daemons().start()
    status = run.wait_ready()

    # /status: what the engine runs and what it reported
    assert status["ready"] is True
    assert status["profile"] == "4090d-qwen3-4b"
    assert status["simulated"] is True
    assert status["attempt"] == 1 and status["restarts"] == 0
    assert history_events(status) == ["launch", "ready"]
    assert status["max_model_len"] == 40960
    # clients use the profile's address (the front door); the engine listens privately behind it
    assert status["url"] == f"http://127.0.0.1:{run.engine_port}" and status["frontdoor"]["enabled"] is True
    private = int(status["argv"][status["argv"].index("--port") + 1])
    assert private != run.engine_port and status["engine_url"] == f"http://127.0.0.1:{private}"
    tokens, conc = status["kv_cache_tokens"], status["max_concurrency"]
    assert isinstance(tokens, int) and tokens > 40960
    assert conc == pytest.approx(tokens / 40960, abs=0.01)

    # the daemon's own log shows the numbers it parsed, and they are the ones /status serves
    parsed = wait_until(lambda: parsed_from_log(run.stderr()), 10, what="the KV line in the daemon log")
    assert parsed == (tokens, pytest.approx(conc, abs=0.005), 40960)
    assert f"ready: {tokens:,} KV tokens" in run.stderr()

    # ... and equal the engine's own /metrics
    info = engine_metrics_cache_info(run.engine_port)
    assert int(info["kv_cache_size_tokens"]) == tokens
    assert float(info["kv_cache_max_concurrency"]) == pytest.approx(conc, abs=0.005)
    # the daemon confirms the log's number through the engine's /metrics just after ready
    confirmed = run.wait_status(lambda s: s["kv_cache_tokens_metrics"] is not None, 15, "the /metrics check")
    assert confirmed["kv_cache_tokens_metrics"] == tokens
    assert "KV tokens differ" not in run.stderr()

    tree = run.tree()
    engine_pids = {p.pid for p in run.engine_processes()}
    assert status["pid"] in engine_pids and run.engine_core() is not None
    assert run.held_mib() > 0

    # SIGTERM: exit 0, nothing of the tree left, the engine port free, within stop time + 2 s
    t0 = time.monotonic()
    run.signal(signal.SIGTERM)
    code = run.wait_exit(30)
    gone = wait_until(lambda: not run.tree() and port_free(run.engine_port) and port_free(private), 10, 0.02,
                      "the tree to end and the port to be free")
    elapsed = time.monotonic() - t0
    assert code == 0, run.stderr_tail()
    assert gone
    for proc in tree:
        assert not alive(proc), proc
    assert run.held_mib() == 0
    # CONTRACT: vLLM's own shutdown time + 2 s. The simulator shuts down in a few tenths of a
    # second (0.3 s measured here); 5 s leaves room for a loaded machine.
    assert elapsed < 5.0, elapsed
    assert "state stopping -> stopped" in run.stderr()


def test_sigint_stops_like_sigterm(daemons) -> None:
    run = daemons().start()
    run.wait_ready()
    engines = run.engine_processes()
    run.signal(signal.SIGINT)
    assert run.wait_exit(30) == 0, run.stderr_tail()
    wait_until(lambda: not run.tree(), 10, 0.05, "the tree to end")
    assert engines and not any(alive(p) for p in engines)
    assert run.held_mib() == 0 and port_free(run.engine_port)


def test_a_second_sigint_ends_an_engine_that_ignores_sigterm_at_once(daemons) -> None:
    """Ctrl-C twice: the guard, still waiting out the stop timeout (60 s) for an API server that
    ignores SIGTERM, SIGKILLs the tree on the daemon's word; nothing is left."""
    run = daemons(startup_s=0.5, env={"LLM_SUPERVISOR_SIM_FAULT": "ignore_sigterm",
                                      "LLM_SUPERVISOR_SIM_DEATH_GRACE_S": "120",
                                      "LLM_SUPERVISOR_STOP_TIMEOUT_S": "60"}).start()
    run.wait_ready()
    engines = run.engine_processes()
    run.signal(signal.SIGINT)
    wait_until(lambda: "a second signal ends it now" in run.stderr(), 15, 0.05, "the first stop's line")
    assert any(alive(p) for p in engines), "the API server should still be waiting out its SIGTERM"
    run.signal(signal.SIGINT)
    assert run.wait_exit(40) == 0, run.stderr_tail()  # a deadline inside the 60 s stop timeout
    wait_until(lambda: not run.tree(), 10, 0.05, "the tree to end")
    assert not any(alive(p) for p in engines) and port_free(run.engine_port)
    assert "ignored SIGTERM" not in run.stderr()  # the stop did not wait out its timeout
    assert "SIGINT again: ending vLLM now with SIGKILL" in run.stderr()
    assert "killed with SIGKILL on a second stop signal" in run.stderr()


def _kill9_and_expect_cleanup(run: DaemonRun) -> None:
    engines = run.engine_processes()
    assert engines, "no simulator process to orphan"
    t0 = time.monotonic()
    run.signal(signal.SIGKILL)
    assert run.wait_exit(10) == -signal.SIGKILL
    # The guard sees the control socket close and stops the engine tree, EngineCore included
    # (which on its own survives its API server's death, as vLLM's does).
    wait_until(lambda: not any(alive(p) for p in engines), 15, 0.02,
               "the simulator processes to end after the daemon's SIGKILL")
    elapsed = time.monotonic() - t0
    wait_until(lambda: not run.tree(), 10, 0.05, "the guard to exit")
    wait_until(lambda: run.held_mib() == 0, 5, 0.05, "the simulated GPU memory to be released")
    assert port_free(run.engine_port)
    assert elapsed < 5.0, f"the engine outlived the daemon by {elapsed:.1f} s"
    print(f"engine gone {elapsed:.2f} s after the daemon's SIGKILL")


def test_kill9_of_the_daemon_while_ready_leaves_no_engine(daemons) -> None:
    run = daemons().start()
    run.wait_ready()
    core = run.engine_core()
    assert core is not None
    assert run.held_mib() > 0
    _kill9_and_expect_cleanup(run)
    assert not alive(core)


def test_kill9_of_the_daemon_during_startup_leaves_no_engine(daemons) -> None:
    # EngineCore hangs in torch.compile: the daemon is still `starting` when it dies.
    run = daemons(env={"LLM_SUPERVISOR_SIM_FAULT": "hang_startup=compile"}).start()
    run.wait_status(lambda s: s["state"] == "starting" and s.get("pid") is not None, what="an engine starting")
    wait_until(lambda: run.engine_core() is not None and run.held_mib() > 0, 30, 0.05,
               "EngineCore to hold simulated GPU memory")
    assert run.status()["state"] == "starting"
    _kill9_and_expect_cleanup(run)


BAD_PROFILES = {
    "many problems": (
        "name: bad one\nhardware:\n  gpu_name: 'RTX('\n  gpu_count: 0\n  gpu_memory_gib: 24\n"
        "model:\n  id: Qwen/Qwen3-4B\nvllm:\n  gpu_memory_utilization: 1.5\n  colour: blue\n",
        ["name:", "hardware.gpu_name:", "hardware.gpu_count:", "vllm.gpu_memory_utilization:", "vllm.colour:"],
    ),
    "broken yaml": ("name: x\nhardware: [1, 2\n", ["not valid YAML at line"]),
    "more GPUs than hardware": (
        "name: tp3\nhardware: {gpu_name: 'RTX 4090', gpu_count: 1, gpu_memory_gib: 24}\n"
        "model: {id: Qwen/Qwen3-4B}\nvllm: {tensor_parallel_size: 3}\n",
        ["vllm.tensor_parallel_size × vllm.pipeline_parallel_size × vllm.data_parallel_size = 3"],
    ),
}


def test_bad_profiles_exit_2_with_one_line_per_problem(daemons, tmp_path: Path) -> None:
    run = daemons()  # never started: it only provides an isolated environment
    env = run.env
    for label, (text, expected) in BAD_PROFILES.items():
        path = tmp_path / f"{label.replace(' ', '-')}.yaml"
        path.write_text(text)
        result = run_cli(["up", "--profile", str(path), "--simulate"], env)
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert result.returncode == 2, (label, result.stderr)
        assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, label
        assert len(lines) == len(expected), (label, lines)
        for line, want in zip(lines, expected):
            assert line.startswith(f"error: {path}: "), (label, line)
            assert want in line, (label, line)
    missing = run_cli(["up", "--profile", str(tmp_path / "nope.yaml"), "--simulate"], env)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip() == f"error: {tmp_path / 'nope.yaml'}: no such profile file"
    # no daemon ever started: nothing holds the state dir lock, no engine log
    assert not run.state_dir.exists()


def _ready_or_failed(run: DaemonRun, timeout: float = 60) -> dict:
    return run.wait_status(lambda s: s["state"] in ("ready", "failed"), timeout, "ready or failed")


@pytest.mark.parametrize("version", ["0.26.0", "0.34.0"])
def test_kv_cache_too_small_recovers_in_one_relaunch_and_is_remembered(daemons, version: str) -> None:
    # Utilization 0.5 leaves ~4 GiB of KV cache: 40,960 tokens (5.62 GiB) do not fit. The simulator
    # speaks the version `--simulate` takes from LLM_SUPERVISOR_SIM_VLLM_VERSION.
    run: DaemonRun = daemons(sets=[NO_PLAN, "vllm.gpu_memory_utilization=0.5"],
                             env={"LLM_SUPERVISOR_SIM_VLLM_VERSION": version}).start()
    status = run.wait_ready(60)
    assert status["vllm"]["version"] == version and status["facts"]["vllm_version"] == version

    assert history_events(status) == ["launch", "exit", "relaunch", "launch", "ready"]
    assert status["attempt"] == 2 and status["restarts"] == 1
    assert status["restarts_by_reason"] == {"kv_cache_too_small": 1}
    failure = next(h["failure"] for h in status["history"] if h["event"] == "exit")
    assert failure["kind"] == "kv_cache_too_small"
    values = failure["values"]
    assert values["max_model_len"] == 40960
    assert values["needed_gib"] == pytest.approx(5.62, abs=0.01)
    assert values["available_gib"] < values["needed_gib"]
    estimate = values["estimated_max_model_len"]
    # the simulator printed it in vLLM's words; the daemon took it from there
    assert f"the estimated maximum model length is {estimate}." in run.engine_log()

    (relaunch,) = relaunches(status)
    recovered = relaunch["change"]["max_model_len"][1]
    if version == "0.26.0":
        assert recovered == estimate // 16 * 16
    else:  # 0.34 checked its pre-warm-up estimate; the cache after warm-up is smaller by the CUDA graphs
        assert recovered < estimate and "after warm-up" in relaunch["reason"]
    assert relaunch["change"] == {"max_model_len": [40960, recovered]}
    assert relaunch["failure"]["kind"] == "kv_cache_too_small"
    assert str(estimate) in relaunch["reason"] and "40960 → " in relaunch["reason"]
    assert status["max_model_len"] == recovered
    assert status["argv"][status["argv"].index("--max-model-len") + 1] == str(recovered)
    assert status["gpu_memory_utilization"] == 0.5
    # each history entry says when, what, which failure and which change; reasons carry numbers
    for entry in status["history"]:
        assert set(entry) >= {"at", "event", "failure", "change"}
        time.strptime(entry["at"][:19], "%Y-%m-%dT%H:%M:%S")
    launch = status["history"][0]
    assert "--max-model-len 40960" in launch["reason"] and "--gpu-memory-utilization 0.5" in launch["reason"]
    assert relaunch["failure"]["message"].startswith("ValueError: To serve at least one request")
    assert "5.62 GiB" in relaunch["reason"] and "utilization 0.5" in relaunch["reason"]
    ready = status["history"][-1]
    assert f"{status['kv_cache_tokens']:,} KV tokens" in ready["reason"]

    # the largest context that fits is what the KV cache holds at these settings
    largest = status["kv_cache_tokens"]
    assert recovered <= largest
    assert recovered >= 0.95 * largest, (recovered, largest)

    # Last-good arguments: stop, start again -> the first launch uses the recovered length.
    run.signal(signal.SIGTERM)
    assert run.wait_exit(30) == 0
    before = len(run.stderr())
    run.restart_process()
    again = run.wait_ready(60)
    assert history_events(again) == ["launch", "ready"], again["history"]
    assert again["attempt"] == 1 and again["restarts"] == 0
    assert again["max_model_len"] == recovered
    assert again["argv"][again["argv"].index("--max-model-len") + 1] == str(recovered)
    assert "starting from the arguments that last reached ready" in run.stderr()[before:]
    assert f"max_model_len 40960 → {recovered}" in run.stderr()[before:]


def test_engine_death_after_ready_restarts_with_the_same_arguments(daemons) -> None:
    run = daemons().start()
    before = run.wait_ready()
    core = run.engine_core()
    assert core is not None
    held = run.held_mib()
    os.kill(core.pid, signal.SIGKILL)
    after = run.wait_status(lambda s: s["state"] == "ready" and s["attempt"] == 2, 60, "ready again")

    port = before["argv"].index("--port") + 1  # the same arguments; a fresh private port
    assert after["argv"][:port] + after["argv"][port + 1:] == before["argv"][:port] + before["argv"][port + 1:]
    assert after["pid"] != before["pid"]
    assert after["restarts"] == 1 and after["restarts_by_reason"] == {"engine_dead": 1}
    assert history_events(after) == ["launch", "ready", "exit", "relaunch", "launch", "ready"]
    exit_event = after["history"][2]
    assert exit_event["failure"]["kind"] == "engine_dead"
    relaunch = after["history"][3]
    assert relaunch["change"] is None and "same arguments" in relaunch["reason"]
    assert "after it was ready" in relaunch["reason"]
    # one engine holds the simulated GPU, not two: the dead one released its share
    new_core = run.engine_core()
    assert new_core is not None and new_core.pid != core.pid
    assert not alive(core)
    assert 0 < run.held_mib() < 1.5 * held


def test_missing_model_folder_is_bad_input(daemons) -> None:
    run = daemons(args=["--model", "/nonexistent/folder"]).start()
    assert run.wait_exit(30) == 2
    lines = [ln for ln in run.stderr().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --model /nonexistent/folder: no such folder")


@pytest.mark.parametrize("door", [True, False])
def test_engine_port_in_use_is_refused_before_launch(daemons, door: bool) -> None:
    run = daemons(sets=[] if door else ["frontdoor.enabled=false"])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", run.engine_port))
        holder.listen()
        run.start()
        assert run.wait_exit(30) == 1
    lines = [ln for ln in run.stderr().splitlines() if ln.startswith("error:")]
    expected = (f"vllm.port={run.engine_port}: front door port {run.engine_port} is in use on 127.0.0.1" if door
                else f"engine port {run.engine_port} on 127.0.0.1 is in use")
    assert len(lines) == 1 and expected in lines[0], lines
    if not door:  # who holds it is named: this test's process
        assert lines[0].endswith(f"{psutil.Process().name()} pid {os.getpid()} listens there; stop it or set "
                                 "--set vllm.port=…"), lines
    assert "Traceback" not in run.stderr()
    assert not (run.state_dir / "logs").exists()  # no engine was ever launched
    assert port_free(run.engine_port)


def test_token_auth_restart_and_the_command_line(daemons) -> None:
    token = "s3cret-token-for-tests"
    run = daemons(env={"LLM_SUPERVISOR_API_TOKEN": token}).start()
    first = run.wait_ready()

    # reading needs no token; admin actions do
    assert run.get("/status").status_code == 200
    r = run.post("/restart")
    assert r.status_code == 401 and r.headers.get("www-authenticate") == "Bearer"
    assert run.post("/restart", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert run.post("/stop", headers={"Authorization": "Basic " + token}).status_code == 401
    assert run.status()["attempt"] == 1  # nothing happened
    r = run.post("/restart", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 202
    second = run.wait_status(lambda s: s["state"] == "ready" and s["attempt"] == 2, 60, "ready after restart")
    assert second["pid"] != first["pid"] and second["restarts_by_reason"] == {"admin": 1}
    new_engine = [p for p in run.engine_processes() if p.pid == second["pid"]]
    assert new_engine, "the new engine pid is a live simulator process"

    # the token never reaches the engine, the status or the engine's argv
    environ = open(f"/proc/{second['pid']}/environ", "rb").read().decode(errors="replace")
    assert token not in environ
    assert token not in run.get("/status").text

    # `supervisor status`: one screen with state, model, KV tokens, concurrency
    env = dict(run.env)
    human = run_cli(["status"], env)
    assert human.returncode == 0, human.stderr
    text = human.stdout
    assert "READY" in text and "Qwen/Qwen3-4B" in text
    assert f"{second['kv_cache_tokens']:,} tokens" in text
    assert f"{second['max_concurrency']:.2f}× at 40,960 tokens" in text
    assert "admin ×1" in text
    as_json = run_cli(["status", "--json"], env)
    assert as_json.returncode == 0
    data = json.loads(as_json.stdout)
    assert data["state"] == "ready" and data["kv_cache_tokens"] == second["kv_cache_tokens"]

    # `supervisor stop` with a wrong token: a clear line, exit 1, nothing stopped
    no_token = {k: v for k, v in env.items() if k != "LLM_SUPERVISOR_API_TOKEN"}
    wrong = run_cli(["stop", "--token", "nope"], no_token)
    assert wrong.returncode == 1 and wrong.stderr.strip().startswith("error: ") and "token" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert run.status()["state"] == "ready"

    # `supervisor stop` (token from the environment): exit 0, the daemon exits 0, nothing remains
    stop = run_cli(["stop"], env)
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.startswith("stop: ")
    assert run.wait_exit(30) == 0
    wait_until(lambda: not run.tree(), 10, 0.05, "the tree to end")
    assert port_free(run.engine_port)

    # `supervisor status` with no daemon: exit 1, one clear line
    gone = run_cli(["status"], env)
    assert gone.returncode == 1
    assert gone.stderr.strip().splitlines() == [
        f"error: no daemon answering at {run.url} (is `supervisor up` running? set --url or LLM_SUPERVISOR_API_PORT)"]
    assert "Traceback" not in gone.stderr


def test_non_loopback_api_without_token_is_refused(daemons) -> None:
    run = daemons(env={"LLM_SUPERVISOR_API_HOST": "0.0.0.0"}).start()
    assert run.wait_exit(30) == 2
    lines = [ln for ln in run.stderr().splitlines() if ln.strip()]
    assert lines == ["error: LLM_SUPERVISOR_API_HOST=0.0.0.0: refusing to serve the admin API on a non-loopback "
                     "address without LLM_SUPERVISOR_API_TOKEN"]
    assert not run.tree() and not (run.state_dir / "logs").exists()
    try:
        httpx.get(f"http://127.0.0.1:{run.api_port}/healthz", timeout=1, trust_env=False)
        raise AssertionError("something answers on the API port")
    except httpx.ConnectError:
        pass
