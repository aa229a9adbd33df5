"""The daemon end to end over real processes: start to ready, the facts it reports, clean stops,
and no orphan when the daemon itself is SIGKILLed (before or after ready). Bad profiles fail
fast with one line per problem."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from daemon_harness import (  # noqa: F401 - `daemons` is a fixture
    DaemonRun,
    alive,
    daemons,
    engine_metrics_cache_info,
    history_events,
    parsed_from_log,
    port_free,
    run_cli,
    wait_until,
)


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
    assert "--port" in status["argv"] and str(run.engine_port) in status["argv"]
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
    gone = wait_until(lambda: not run.tree() and port_free(run.engine_port), 10, 0.02,
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
        ["tensor_parallel_size × pipeline_parallel_size × data_parallel_size = 3"],
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
