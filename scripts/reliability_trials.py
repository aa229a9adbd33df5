"""The reliability trials of docs/reliability.md, with their counts: random `kill -9` of the daemon,
of the guard, of the guard then the daemon, and during recovery, each checked for orphans; a full
log disk; every class of bad input; the secret sweep of every output.

    python scripts/reliability_trials.py                  # the counts in the docs (~5 minutes on 2 cores)
    python scripts/reliability_trials.py --quick          # a few of each
    python scripts/reliability_trials.py --write-docs     # also rewrite the table in docs/reliability.md

Real processes throughout: the daemon (`supervisor up --simulate`), its guard and the simulated vLLM
tree, each run with its own state dir, simulated GPU and ports (tests/daemon_harness.py). An orphan
is any process of the run still alive, the engine port still bound, or simulated GPU memory still
held 20 s after the kill. Random moments come from a seeded generator (`--seed`, printed).
Progress goes to stderr; one JSON line with every count to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from daemon_harness import DaemonRun, port_free, wait_until  # noqa: E402
from hardening_utils import clean_env, cli  # noqa: E402

CLEAN_DEADLINE_S = 20.0
DOCS = REPO / "docs" / "reliability.md"
MARK_START, MARK_END = "<!-- trials:start -->", "<!-- trials:end -->"


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def left_behind(run: DaemonRun) -> list[str]:
    """Wait up to CLEAN_DEADLINE_S for nothing of the run to be left; what is left then."""
    deadline = time.monotonic() + CLEAN_DEADLINE_S
    while time.monotonic() < deadline:
        if not run.tree() and port_free(run.engine_port) and run.held_mib() == 0:
            return []
        time.sleep(0.05)
    left = []
    for proc in run.tree():
        try:
            left.append(f"{proc.pid} {' '.join(proc.cmdline())[:60]}")
        except Exception:  # noqa: BLE001
            left.append(str(proc.pid))
    if not port_free(run.engine_port):
        left.append(f"engine port {run.engine_port} bound")
    if run.held_mib():
        left.append(f"{run.held_mib()} simulated MiB held")
    return left


class Series:
    def __init__(self, name: str) -> None:
        self.name = name
        self.trials = 0
        self.orphans = 0
        self.failures: list[str] = []
        self.times: list[float] = []
        self.moments: dict[str, int] = {}

    def record(self, moment: str, left: list[str], took: float | None, problem: str | None = None) -> None:
        self.trials += 1
        self.moments[moment] = self.moments.get(moment, 0) + 1
        if left:
            self.orphans += 1
            self.failures.append(f"{moment}: left {left}")
        if problem:
            self.failures.append(f"{moment}: {problem}")
        if took is not None:
            self.times.append(took)

    def to_json(self) -> dict[str, Any]:
        t = sorted(self.times)
        return {"trials": self.trials, "orphans": self.orphans, "moments": self.moments,
                "problems": self.failures[:10],
                "clean_s_median": round(t[len(t) // 2], 3) if t else None, "clean_s_max": round(t[-1], 3) if t else None}


def _clean_time(run: DaemonRun) -> tuple[list[str], float]:
    t0 = time.monotonic()
    left = left_behind(run)
    return left, time.monotonic() - t0


def _kill_daemon(run: DaemonRun) -> None:
    run.signal(signal.SIGKILL)
    run.wait_exit(15)


def _saved_events(run: DaemonRun) -> list[str]:
    return [str(h.get("event")) for h in run.state_history()]


# ---------------------------------------------------------------- the kill series

RECOVERY_SETS = ["vllm.gpu_memory_utilization=0.4", "recovery.min_gpu_memory_utilization=0.3",
                 "recovery.plan_first_launch=false"]


def daemon_kills(root: Path, n: int, r: random.Random) -> Series:
    """kill -9 of the daemon at a random moment of the engine's life."""
    series = Series("daemon")
    moments = ["launching", "mid-startup", "ready", "admin restart", "backoff", "recovery"]
    for i in range(n):
        moment = moments[i % len(moments)] if i < len(moments) else r.choice(moments)
        env, sets = {}, []
        if moment == "backoff":
            env = {"LLM_SUPERVISOR_SIM_FAULT": "die_after_ready=0.2"}
            sets = ["recovery.backoff_initial_s=5", "recovery.backoff_max_s=5"]
        if moment == "recovery":
            sets = RECOVERY_SETS
        run = DaemonRun(root / f"daemon-{i}", startup_s=r.uniform(0.3, 1.2), sets=sets, env=env)
        try:
            run.start()
            if moment in ("launching", "mid-startup"):
                run.wait_status(lambda s: s.get("pid") is not None, what="launched")
                time.sleep(r.uniform(0, 0.3) if moment == "launching" else r.uniform(0.3, 1.0))
            elif moment == "ready":
                run.wait_ready()
                time.sleep(r.uniform(0, 1.0))
            elif moment == "admin restart":
                run.wait_ready()
                run.post("/restart")
                time.sleep(r.uniform(0, 0.6))
            elif moment == "backoff":
                run.wait_state("backoff")
                time.sleep(r.uniform(0, 1.0))
            else:
                wait_until(lambda: "exit" in _saved_events(run), 60, 0.01, "the first failure")
                time.sleep(r.uniform(0, 1.5))
            _kill_daemon(run)
            left, took = _clean_time(run)
            series.record(moment, left, took)
        except AssertionError as exc:
            series.record(moment, left_behind(run), None, f"trial broke: {str(exc).splitlines()[0][:200]}")
        finally:
            run.cleanup()
            shutil.rmtree(run.tmp, ignore_errors=True)
        log(f"daemon kill {i + 1}/{n} ({moment}): orphans so far {series.orphans}")
    return series


def guard_kills(root: Path, n: int, r: random.Random) -> Series:
    """kill -9 of the guard: seen at once, the old tree ended, a relaunch begun; then SIGTERM and
    nothing left. A fresh daemon each time (two deaths after ready in a row are a flapping engine,
    which recovery rightly gives up on)."""
    series = Series("guard")
    for i in range(n):
        moment = r.choice(["startup", "ready"])
        run = DaemonRun(root / f"guard-{i}", startup_s=r.uniform(0.5, 1.2))
        try:
            run.start()
            if moment == "ready":
                status = run.wait_ready()
                time.sleep(r.uniform(0, 0.5))
            else:
                run.wait_status(lambda s: s.get("guard_pid"), what="a guard")
                time.sleep(r.uniform(0, 0.4))
            status = run.status() or {}
            guard, attempt = status.get("guard_pid"), status.get("attempt") or 0
            old = [p.pid for p in run.engine_processes()]
            if not guard:
                raise AssertionError(f"no guard to kill (state {status.get('state')})")
            os.kill(guard, signal.SIGKILL)
            t0 = time.monotonic()
            problem = None
            try:
                run.wait_status(lambda s: (s.get("attempt") or 0) > attempt, what="the relaunch")
            except AssertionError as exc:
                problem = f"no relaunch: {str(exc).splitlines()[0][:200]}"
            noticed = time.monotonic() - t0
            deadline = time.monotonic() + CLEAN_DEADLINE_S
            while time.monotonic() < deadline and any(_alive(p) for p in old):
                time.sleep(0.05)
            left = [f"old engine process {p}" for p in old if _alive(p)]
            run.signal(signal.SIGTERM)
            run.wait_exit(60)
            left += left_behind(run)
            series.record(moment, left, noticed, problem)
        except AssertionError as exc:
            series.record(moment, left_behind(run), None, f"trial broke: {str(exc).splitlines()[0][:200]}")
        finally:
            run.cleanup()
            shutil.rmtree(run.tmp, ignore_errors=True)
        log(f"guard kill {i + 1}/{n} ({moment}): orphans so far {series.orphans}")
    return series


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def guard_then_daemon(root: Path, n: int, r: random.Random) -> Series:
    series = Series("guard-then-daemon")
    for i in range(n):
        run = DaemonRun(root / f"gtd-{i}", startup_s=r.uniform(0.3, 0.8))
        moment = r.choice(["startup", "ready"])
        delay = r.choice([0.0, r.uniform(0, 0.05), r.uniform(0.05, 0.5)])
        try:
            run.start()
            status = run.wait_ready() if moment == "ready" else run.wait_status(lambda s: s.get("guard_pid"), what="guard")
            os.kill(status["guard_pid"], signal.SIGKILL)
            time.sleep(delay)
            _kill_daemon(run)
            left, took = _clean_time(run)
            series.record(f"{moment}, daemon {delay * 1000:.0f} ms later", left, took)
        except AssertionError as exc:
            series.record(moment, left_behind(run), None, f"trial broke: {str(exc).splitlines()[0][:200]}")
        finally:
            run.cleanup()
            shutil.rmtree(run.tmp, ignore_errors=True)
        log(f"guard then daemon {i + 1}/{n}: orphans so far {series.orphans}")
    series.moments = {"startup/ready, daemon 0-500 ms after the guard": series.trials}
    return series


def recovery_kills(root: Path, n: int, r: random.Random) -> Series:
    """kill -9 while a kv_cache_too_small start is being recovered (after the failure, around the
    decision, during the relaunch): of the daemon, or of the guard and then the daemon. The
    decision must already be in state.json when the kill came after it."""
    series = Series("recovery")
    for i in range(n):
        run = DaemonRun(root / f"rec-{i}", startup_s=r.uniform(0.5, 2.0), sets=RECOVERY_SETS)
        what = "daemon" if i % 2 == 0 else "guard, then daemon"
        try:
            run.start()
            wait_until(lambda: "exit" in _saved_events(run), 60, 0.005, "the failure in state.json")
            time.sleep(r.uniform(0, 1.5))
            status = run.status() or {}
            decided = "relaunch" in _saved_events(run) or (status.get("attempt") or 0) >= 2
            if what != "daemon" and status.get("guard_pid"):
                try:
                    os.kill(status["guard_pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
                time.sleep(r.uniform(0, 0.3))
            _kill_daemon(run)
            left, took = _clean_time(run)
            problem = None
            if decided and "relaunch" not in _saved_events(run):
                problem = "the relaunch decision was not in state.json"
            series.record(f"kill of the {what} (state {status.get('state')})", left, took, problem)
        except AssertionError as exc:
            series.record(what, left_behind(run), None, f"trial broke: {str(exc).splitlines()[0][:200]}")
        finally:
            run.cleanup()
            shutil.rmtree(run.tmp, ignore_errors=True)
        log(f"recovery kill {i + 1}/{n} ({what}): orphans so far {series.orphans}")
    return series


# ---------------------------------------------------------------- a full disk


def full_disk(root: Path) -> dict[str, Any]:
    """The daemon in a user and mount namespace with its log dir on a 1 MiB tmpfs; an engine that
    prints ~11 MB once asked. Then: drained, reported once, SIGTERM time."""
    from test_hardening_disk import TmpfsRun, _userns_tmpfs_works

    root.mkdir(parents=True, exist_ok=True)
    why = _userns_tmpfs_works(root)
    if why:
        return {"skipped": why}
    stop_timeout = 3.0
    with TmpfsRun(root / "run", "1m", env={"FAKE_ENGINE_LINES": "100000",
                                           "LLM_SUPERVISOR_STOP_TIMEOUT_S": str(stop_timeout)}) as run:
        run.start()
        run.wait_ready()
        status = run.wait_status(lambda s: (s.get("engine_log") or {}).get("ok") is False, what="the failure")
        run.wait_status(lambda s: any("flood done" in line for line in s.get("log_tail") or []), 120,
                        what="the flood drained")
        status = run.status() or status
        t0 = time.monotonic()
        run.signal(signal.SIGTERM)
        code = run.wait_exit(stop_timeout + 30)
        took = time.monotonic() - t0
        said = sum("No space left on device" in ln for ln in run.stderr().splitlines())
        return {"state_while_full": status["state"], "dropped_bytes": status["engine_log"]["dropped_bytes"],
                "failure_reported_times": said, "engine_output_drained": True, "sigterm_exit": code,
                "sigterm_s": round(took, 2), "stop_timeout_s": stop_timeout,
                "traceback": "Traceback" in run.stderr()}


# ---------------------------------------------------------------- bad input


def bad_inputs(root: Path) -> dict[str, Any]:
    """Every class of bad input through the command line: (exit code, error lines, traceback?)."""
    root.mkdir(parents=True, exist_ok=True)
    profile = (REPO / "profiles" / "4090d-qwen3-4b.yaml").read_text()

    def write(name: str, text: str) -> str:
        path = root / name
        path.write_text(text)
        return str(path)

    plan = ["plan", "--simulate", "--profile"]
    shipped = str(REPO / "profiles" / "4090d-qwen3-4b.yaml")
    (root / "afile").write_text("")
    deep = root / "state-deep"
    deep.mkdir(exist_ok=True)
    (deep / "state.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    (deep / "calibration.json").write_bytes(b"{" * 100_000)
    cases: dict[str, tuple[list[str], dict[str, str], int]] = {
        "integer of 5,000 digits in a profile": (plan + [write("digits.yaml", profile.replace("port: 8000", "port: " + "9" * 5000))], {}, 2),
        "integer of 3,000 digits in --set": (plan + [shipped, "--set", "vllm.max_model_len=" + "1" * 3000], {}, 2),
        "YAML nested 600 deep": (plan + [write("deep.yaml", profile + "env: " + "[" * 600 + "]" * 600 + "\n")], {}, 2),
        "a billion CPUs": (plan + [shipped, "--set", "affinity.mode=explicit", "--set", "affinity.cpus=0-1000000000"], {}, 2),
        "affinity.cpus: [-1] in auto mode": (plan + [shipped, "--set", "affinity.cpus=[-1]"], {}, 2),
        "duplicate key (a second vllm:)": (plan + [write("dup.yaml", profile + "vllm:\n  port: 9\n")], {}, 2),
        "10 MB profile": (plan + [write("big.yaml", profile + "description: |\n" + ("  " + "x" * 99 + "\n") * 100_000)], {}, 2),
        "engine command with an unclosed quote": (plan + [shipped], {"LLM_SUPERVISOR_ENGINE_COMMAND": 'vllm "serve'}, 2),
        "STOP_TIMEOUT_S=inf": (plan + [shipped], {"LLM_SUPERVISOR_STOP_TIMEOUT_S": "inf"}, 2),
        "whitespace-only API token": (plan + [shipped], {"LLM_SUPERVISOR_API_TOKEN": "    "}, 2),
        "one-character API token": (plan + [shipped], {"LLM_SUPERVISOR_API_TOKEN": "x"}, 2),
        "vllm.host: \"not a host!\"": (plan + [shipped, "--set", "vllm.host=not a host!"], {}, 2),
        "a --set that breaks a cross-key rule": (plan + [shipped, "--set", "vllm.max_model_len=100"], {}, 2),
        "log dir that is a file": (["up", "--simulate", "--profile", shipped],
                                   {"LLM_SUPERVISOR_LOG_DIR": str(root / "afile"), "LLM_SUPERVISOR_API_PORT": "0"}, 2),
        "state and calibration nested 100,000 deep": (plan + [shipped], {"LLM_SUPERVISOR_STATE_DIR": str(deep)}, 0),
    }
    out: dict[str, Any] = {}
    for label, (args, env, want) in cases.items():
        t0 = time.monotonic()
        result = cli(args, clean_env(root, **env), timeout=120)
        lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
        text = result.stdout + result.stderr
        ok = result.returncode == want and "Traceback" not in text and (want == 0 or len(lines) == 1)
        if want == 0:
            ok = ok and "corrupt" in result.stderr
        said = lines[0].replace(str(root) + "/", "").replace(str(REPO) + "/", "") if lines else ""
        out[label] = {"exit": result.returncode, "lines": len(lines), "ok": ok, "seconds": round(time.monotonic() - t0, 2),
                      "said": said[:200]}
        log(f"bad input: {label}: exit {result.returncode}, {len(lines)} line(s){'' if ok else '  <-- NOT OK'}")
    # Ctrl-C at seven moments of the start
    interrupted = []
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8):
        env = clean_env(root / f"ctrlc-{delay}", LLM_SUPERVISOR_API_PORT="0")
        proc = subprocess.Popen([sys.executable, "-m", "llm_supervisor", "up", "--profile", "4090d-qwen3-4b", "--simulate"],
                                env=env, cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if "pydantic_core" in Path(f"/proc/{proc.pid}/maps").read_text():
                    break
            except OSError:
                pass
            time.sleep(0.001)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        interrupted.append(proc.returncode in (0, 130, -2) and b"Traceback" not in stdout + stderr)
    out["Ctrl-C during the start (7 moments)"] = {"ok": all(interrupted), "exit": None, "lines": 0,
                                                   "said": f"{sum(interrupted)} of 7 clean"}
    return out


# ---------------------------------------------------------------- the secret sweep


def secret_sweep(root: Path) -> dict[str, Any]:
    """Secrets of every kind the supervisor is given, a daemon that fails because vLLM's argparse
    rejects a secret-bearing flag (and echoes it), then every output searched."""
    from hardening_utils import find_secrets

    root.mkdir(parents=True, exist_ok=True)
    extra, db_pass, passwd, key, token, hf = (p + secrets.token_hex(10) for p in ("xa-", "db-", "pw-", "key-", "tok-", "hf_"))
    text = (REPO / "profiles" / "4090d-qwen3-4b.yaml").read_text().replace('extra_args: ["--max-log-len", "100"]', "")
    profile = root / "p.yaml"
    profile.write_text(text + f"env:\n  DB_PASS: {db_pass}\n  MY_PASSWD: {passwd}\n  HF_TOKEN: {hf}\n")
    sets = [f"vllm.extra_args=--db-password {extra}"]
    env = {"LLM_SUPERVISOR_API_TOKEN": token, "LLM_SUPERVISOR_ENGINE_API_KEY": key, "LLM_SUPERVISOR_FAILED_LINGER_S": "60"}
    everything = (extra, db_pass, passwd, key, token, hf)
    seen: dict[str, str | bytes] = {}
    with DaemonRun(root / "run", profile=str(profile), sets=sets, env=env) as run:
        run.start()
        run.wait_state("failed")
        for path in ("/status", "/metrics", "/", "/readyz", "/healthz", "/openapi.json"):
            seen[f"GET {path}"] = run.get(path).text
        cli_env = clean_env(root, LLM_SUPERVISOR_API_PORT=str(run.api_port), **env)
        for label, args in {"status": ["status"], "status --json": ["status", "--json"],
                            "plan": ["plan", "--profile", str(profile), "--simulate", "--set", sets[0]],
                            "plan --json": ["plan", "--profile", str(profile), "--simulate", "--json", "--set", sets[0]],
                            "profiles show": ["profiles", "show", str(profile)]}.items():
            result = cli(args, cli_env)
            seen[f"`{label}`"] = result.stdout + result.stderr
        run.signal(signal.SIGTERM)
        run.wait_exit(30)
        seen["daemon log"] = run.stderr()
        for path in run.state_dir.rglob("*"):
            if path.is_file() and "cache" not in path.parts:
                seen[str(path.relative_to(run.state_dir))] = path.read_bytes()
        echoed = "unrecognized arguments: --db-password ***" in seen.get("logs/4090d-qwen3-4b.log", b"").decode()
    hits = find_secrets(everything, seen)
    return {"secrets": len(everything), "outputs_searched": len(seen), "outputs": sorted(seen), "found": hits,
            "engine_error_echo_masked": echoed}


# ---------------------------------------------------------------- report


def table(results: dict[str, Any]) -> str:
    rows = ["| trial | runs | orphans / failures | notes |", "|---|---:|---:|---|"]
    names = {"daemon": "`kill -9` of the daemon at a random moment", "guard": "`kill -9` of the guard",
             "guard-then-daemon": "`kill -9` of the guard, then of the daemon 0–500 ms later",
             "recovery": "`kill -9` during recovery (daemon, or guard then daemon)"}
    for key, title in names.items():
        s = results.get(key)
        if not s:
            continue
        moments = ", ".join(f"{m} ×{c}" for m, c in sorted(s["moments"].items()))
        timing = (f"; relaunch begun after {s['clean_s_median']} s (median), {s['clean_s_max']} s (max)" if key == "guard"
                  else f"; clean after {s['clean_s_median']} s (median), {s['clean_s_max']} s (max)")
        rows.append(f"| {title} | {s['trials']} | {s['orphans']} | {moments}{timing if s['clean_s_median'] is not None else ''} |")
    disk = results.get("full_disk")
    if disk:
        if "skipped" in disk:
            rows.append(f"| log dir on a full 1 MiB tmpfs | 0 | – | skipped: {disk['skipped']} |")
        else:
            rows.append(f"| log dir on a full 1 MiB tmpfs, ~11 MB of engine output | 1 | 0 | state stayed "
                        f"`{disk['state_while_full']}`, {disk['dropped_bytes']:,} bytes dropped and counted, the failure "
                        f"said {disk['failure_reported_times']}×, SIGTERM → exit {disk['sigterm_exit']} in "
                        f"{disk['sigterm_s']} s (STOP_TIMEOUT_S {disk['stop_timeout_s']:g}), traceback: "
                        f"{'yes' if disk['traceback'] else 'no'} |")
    bad = results.get("bad_inputs")
    if bad:
        good = sum(1 for v in bad.values() if v["ok"])
        rows.append(f"| bad-input classes (each through the command line) | {len(bad)} | {len(bad) - good} | "
                    f"{good} of {len(bad)} gave exit 2 and one line naming the source (state/calibration: set aside, exit 0) |")
    sweep = results.get("secret_sweep")
    if sweep:
        rows.append(f"| secret sweep ({sweep['secrets']} secrets, {sweep['outputs_searched']} outputs) | 1 | "
                    f"{len(sweep['found'])} | vLLM's own argparse error echoing a secret came back masked: "
                    f"{'yes' if sweep['engine_error_echo_masked'] else 'no'} |")
    out = "\n".join(rows)
    if bad:
        out += "\n\nBad-input classes and the line each gave:\n\n| input | exit | line |\n|---|---:|---|\n"
        out += "\n".join(f"| {label} | {v['exit'] if v['exit'] is not None else '–'} | "
                         f"{v['said'].replace('|', '/') if v['said'] else ''} |" for label, v in bad.items())
    return out


def write_docs(text: str, header: str) -> None:
    doc = DOCS.read_text()
    block = f"{MARK_START}\n{header}\n\n{text}\n{MARK_END}"
    if MARK_START in doc:
        doc = re.sub(re.escape(MARK_START) + r".*?" + re.escape(MARK_END), lambda m: block, doc, flags=re.S)
    else:
        doc += "\n" + block + "\n"
    DOCS.write_text(doc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemon", type=int, default=50, help="kill -9 trials of the daemon")
    parser.add_argument("--guard", type=int, default=20, help="kill -9 trials of the guard")
    parser.add_argument("--guard-then-daemon", type=int, default=20)
    parser.add_argument("--recovery", type=int, default=20, help="kill -9 trials during recovery")
    parser.add_argument("--quick", action="store_true", help="3 of each kill trial")
    parser.add_argument("--only", action="append", choices=["daemon", "guard", "guard-then-daemon", "recovery",
                                                             "full_disk", "bad_inputs", "secret_sweep"])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--write-docs", action="store_true", help=f"rewrite the table in {DOCS.relative_to(REPO)}")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    log(f"seed {seed}")
    r = random.Random(seed)
    if args.quick:
        args.daemon = args.guard = args.guard_then_daemon = args.recovery = 3
    runs: dict[str, Callable[[Path], Any]] = {
        "daemon": lambda root: daemon_kills(root, args.daemon, r).to_json(),
        "guard": lambda root: guard_kills(root, args.guard, r).to_json(),
        "guard-then-daemon": lambda root: guard_then_daemon(root, args.guard_then_daemon, r).to_json(),
        "recovery": lambda root: recovery_kills(root, args.recovery, r).to_json(),
        "full_disk": full_disk,
        "bad_inputs": bad_inputs,
        "secret_sweep": secret_sweep,
    }
    results: dict[str, Any] = {"seed": seed}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llm-supervisor-trials-") as tmp:
        for name, run in runs.items():
            if args.only and name not in args.only:
                continue
            log(f"== {name}")
            results[name] = run(Path(tmp) / name)
    results["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(results, default=str), flush=True)
    text = table(results)
    log(text)
    if args.write_docs:
        import platform

        header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python scripts/reliability_trials.py "
                  f"--seed {seed}` on {os.cpu_count()} cores, Python {platform.python_version()}, the bundled simulator "
                  f"as the engine ({results['seconds'] / 60:.0f} minutes in all):")
        write_docs(text, header)
    bad = [k for k in ("daemon", "guard", "guard-then-daemon", "recovery") if results.get(k, {}).get("orphans")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
