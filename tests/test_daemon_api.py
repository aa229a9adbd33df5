"""The REST API and the command line against a real daemon running the simulator, through a
full cycle: starting → ready → engine failure → backoff → starting → ready → admin restart →
restarting → ready → stop."""

from __future__ import annotations

import json
import os
import signal

import httpx
from prometheus_client.parser import text_string_to_metric_families

from daemon_harness import (  # noqa: F401 - `daemons` is a fixture
    DaemonRun,
    StateRecorder,
    daemons,
    history_events,
    is_subsequence,
    port_free,
    run_cli,
    wait_until,
)

CONTRACT_STATUS_KEYS = {"state", "profile", "pid", "uptime_s", "argv", "attempt", "restarts", "kv_cache_tokens",
                        "max_concurrency", "max_model_len", "gpu_memory_utilization", "gpus", "cpus", "history"}


def _metrics(run: DaemonRun) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The daemon's /metrics, parsed by Prometheus' own parser: {(sample name, labels): value}."""
    r = run.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _state_gauges(metrics: dict) -> dict[str, float]:
    return {dict(labels)["state"]: value for (name, labels), value in metrics.items()
            if name == "llm_supervisor_state"}


def _restarts(metrics: dict) -> dict[str, float]:
    return {dict(labels)["reason"]: value for (name, labels), value in metrics.items()
            if name == "llm_supervisor_restarts_total"}


def test_endpoints_through_a_full_cycle(daemons) -> None:
    # a slower start and a 1 s backoff make `starting` and `backoff` easy to observe
    run: DaemonRun = daemons(startup_s=1.0, sets=["recovery.backoff_initial_s=1"]).start()
    with StateRecorder(run) as rec:
        # --- starting
        starting = run.wait_state("starting", 30)
        assert starting["ready"] is False and starting["attempt"] == 1
        assert run.get("/healthz").status_code == 200
        ready_probe = run.get("/readyz")
        if run.status()["state"] == "starting":
            assert ready_probe.status_code == 503
            assert ready_probe.json()["state"] == "starting"

        # --- ready
        status = run.wait_ready()
        assert CONTRACT_STATUS_KEYS <= set(status)
        assert status["pid"] and status["uptime_s"] >= 0 and status["argv"][-1] == "--enable-prefix-caching"
        assert status["cpus"] == sorted(os.sched_getaffinity(0))
        assert run.get("/readyz").status_code == 200
        assert run.get("/healthz").json()["status"] == "ok"
        metrics = _metrics(run)
        gauges = _state_gauges(metrics)
        assert gauges["ready"] == 1 and sum(gauges.values()) == 1
        assert metrics[("llm_supervisor_ready", ())] == 1
        assert metrics[("llm_supervisor_kv_cache_tokens", ())] == status["kv_cache_tokens"]
        assert metrics[("llm_supervisor_max_concurrency", ())] == status["max_concurrency"]
        assert _restarts(metrics).get("engine_dead", 0) == 0
        # GPU memory as the (simulated) NVML reports it, refreshed within its 5 s poll
        gpu = wait_until(lambda: next((g for g in run.status()["gpus"] if g["memory_used_mib"] > 1000), None),
                         15, 0.2, "the GPU poll to see the engine's memory")
        assert gpu["index"] == 0 and gpu["memory_total_mib"] == 24564 and "4090" in gpu["name"]
        assert gpu["memory_used_mib"] == 300 + run.held_mib()

        # --- failure: EngineCore dies; backoff, then a new start, then ready again
        core = run.engine_core()
        assert core is not None
        rec.wait_seen("ready", 1)
        os.kill(core.pid, signal.SIGKILL)
        backoff = run.wait_state("backoff", 30)
        assert backoff["ready"] is False and backoff["pid"] is None
        metrics = _metrics(run)
        assert _restarts(metrics)["engine_dead"] == 1
        assert metrics[("llm_supervisor_ready", ())] == 0
        second = run.wait_status(lambda s: s["state"] == "ready" and s["attempt"] == 2, 60, "ready again")
        assert second["restarts"] == 1 and second["restarts_by_reason"] == {"engine_dead": 1}
        assert history_events(second) == ["launch", "ready", "exit", "relaunch", "launch", "ready"]
        assert _state_gauges(_metrics(run))["ready"] == 1

        # --- admin restart: restarting, then ready with a new engine
        rec.wait_seen("ready", 2)
        r = run.post("/restart")
        assert r.status_code == 202 and r.json()["action"] == "restart"
        third = run.wait_status(lambda s: s["state"] == "ready" and s["attempt"] == 3, 60, "ready after restart")
        assert third["pid"] != second["pid"]
        assert third["restarts_by_reason"] == {"engine_dead": 1, "admin": 1}
        assert history_events(third)[-3:] == ["restart", "launch", "ready"]
        assert _restarts(_metrics(run)) == {"engine_dead": 1, "admin": 1}

        # --- stop
        rec.wait_seen("ready", 3)
        r = run.post("/stop")
        assert r.status_code == 202 and r.json()["action"] == "stop"
        assert run.wait_exit(30) == 0
    assert not run.tree()
    assert port_free(run.engine_port) and port_free(run.api_port)

    states = rec.states()
    assert is_subsequence(["starting", "ready", "backoff", "starting", "ready", "starting", "ready"],
                          states), " ".join(states)
    # `restarting` and `stopping` last only while the engine stops (a few tenths of a second), so
    # polling may miss them; the daemon's log has every transition
    assert "state ready -> restarting: restart requested" in run.stderr()
    assert "state ready -> stopping: stop requested" in run.stderr()
    assert "state stopping -> stopped" in run.stderr()
    assert states[0] in ("stopped", "starting") and set(states) <= {
        "stopped", "starting", "ready", "backoff", "restarting", "stopping"}
    # /readyz is 200 exactly when the state is ready
    for state, _attempt, code in rec.samples:
        assert code == (200 if state == "ready" else 503), (state, code)
    assert {code for _s, _a, code in rec.samples} == {200, 503}


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
