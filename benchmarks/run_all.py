"""Run every benchmark and write benchmarks/results.md (and results.json) from what they print.

    python benchmarks/run_all.py [--only overhead] [--quick]

Each benchmark is a separate process printing one JSON line; nothing in the tables is typed by
hand. --quick shortens the timed windows (for a smoke run; figures are noisier).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import REPO, log, machine_info  # noqa: E402

BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    # name: (normal args, --quick args)
    "recovery": ([], []),
    "overhead": ([], ["--idle-seconds", "8", "--lines", "200000", "--parse-lines", "100000"]),
    "status_latency": ([], ["--seconds", "5"]),
    "detection": ([], ["--repeats", "1"]),
    "frontdoor": ([], ["--seconds", "6", "--rounds", "1", "--clients", "32", "--failover-s", "10"]),
}


def run_one(name: str, quick: bool, timeout: float) -> dict[str, Any]:
    normal, short = BENCHMARKS[name]
    argv = [sys.executable, str(HERE / f"{name}.py"), *(short if quick else normal)]
    log(f"run_all: {name} …")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"benchmark": name, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    if not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"benchmark": name, "error": f"exit {proc.returncode}, no JSON: " + " | ".join(tail)}
    result = json.loads(lines[-1])
    result["wall_s"] = round(time.monotonic() - t0, 1)
    log(f"run_all: {name} done in {result['wall_s']} s")
    return result


# ---------------------------------------------------------------- rendering


def _ok(flag: Any) -> str:
    return "yes" if flag is True else ("**no**" if flag is False else "–")


def _n(value: Any, fmt: str = "{:,}") -> str:
    if value is None:
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _err(section: Any) -> str | None:
    if not section:
        return "not run"
    if isinstance(section, dict) and section.get("error"):
        return "error: " + str(section["error"]).splitlines()[0][:160]
    return None


def contract_rows(res: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows: list[list[str]] = []
    ov = res.get("overhead", {})
    idle, parse, e2e = ov.get("idle", {}), ov.get("parse", {}), ov.get("e2e", {})
    met = ov.get("meets_target", {})
    bad = _err(ov)
    rows.append(["daemon RSS, engine ready and idle", "≤ 80 MB",
                 bad or _err(idle) or f"{idle.get('rss_mb')} MB ({idle.get('rss_mib')} MiB; USS {idle.get('uss_mib')} MiB)",
                 _ok(met.get("rss"))])
    rows.append(["daemon CPU, engine ready and idle", "≤ 1%",
                 bad or _err(idle) or f"{idle.get('cpu_pct')}% ({idle.get('cpu_ms_per_s')} ms CPU per s, {idle.get('seconds')} s)",
                 _ok(met.get("idle_cpu"))])
    rows.append(["log ingestion, LogParser alone", "≥ 100,000 lines/s",
                 bad or _err(parse) or f"{_n(parse.get('logparse_lines_per_s'))} lines/s "
                 f"({_n(parse.get('logparse_and_failures_lines_per_s'))} with FailureClassifier)",
                 _ok(met.get("parse"))])
    rows.append(["log ingestion, engine → daemon end to end", "≥ 100,000 lines/s",
                 bad or _err(e2e) or f"{_n(e2e.get('lines_per_s'))} lines/s ({_n(e2e.get('lines'))} lines, "
                 f"daemon {e2e.get('daemon_cpu_us_per_line')} µs CPU/line, final facts parsed: "
                 f"{_ok(e2e.get('final_fact_parsed'))})",
                 _ok(met.get("e2e"))])
    st = res.get("status_latency", {})
    rows.append([f"GET /status at {_n(st.get('rate'), '{:g}')} requests/s (open loop)", "p99 ≤ 20 ms",
                 _err(st) or f"p50 {st.get('p50_ms')} ms, p99 {st.get('p99_ms')} ms, max {st.get('max_ms')} ms "
                 f"({_n(st.get('ok'))} ok, errors {st.get('errors') or 0})",
                 _ok(st.get("meets_target"))])
    de = res.get("detection", {})
    dmet = de.get("meets_target", {})
    rows.append(["engine exit → relaunch begun (backoff 0)", "≤ 1 s",
                 _err(de) or f"median {de.get('relaunch_after_exit_s_median')} s, max {de.get('relaunch_after_exit_s_max')} s "
                 f"over {len(de.get('relaunch_runs') or [])} kills",
                 _ok(dmet.get("relaunch"))])
    ds, own = de.get("daemon_shutdown", {}), de.get("engine_shutdown", {})
    rows.append(["SIGTERM → tree gone and port free", "≤ engine's own + 2 s",
                 _err(de) or f"daemon: tree {ds.get('tree_gone_s')} s, port {ds.get('engine_port_free_s')} s; "
                 f"engine alone: {own.get('tree_gone_s')} s; margin {de.get('shutdown_margin_s')} s; "
                 f"left alive: {len(ds.get('left_alive') or [])}",
                 _ok(dmet.get("shutdown"))])
    rc = res.get("recovery", {})
    by_version = rc.get("versions") or {"": {"scenarios": rc.get("scenarios") or {}}}
    measured = []
    for version, data in by_version.items():
        kv = (data.get("scenarios") or {}).get("kv_cache_too_small", {}).get("recovery", {})
        measured.append(_err(kv) or f"{'vLLM ' + version + ': ' if version else ''}{kv.get('relaunches')} relaunch(es), "
                        f"context {_n(kv.get('max_model_len'))} of {_n(kv.get('largest_fitting_context'))} "
                        f"({_n(kv.get('context_kept'), '{:.1%}')})")
    rows.append(["kv_cache_too_small recovery", "1 relaunch, ≥ 95% of the largest fitting context",
                 _err(rc) or "; ".join(measured), _ok(rc.get("meets_target"))])
    return rows


def version_rows(rc: dict[str, Any]) -> list[list[str]]:
    """Per scenario: relaunches to ready on each vLLM version (daemon and the policy alone)."""
    versions = list(rc.get("vllm_versions") or [])
    rows = []
    for name, per in (rc.get("relaunches") or {}).items():
        row = [name]
        for policy in ("daemon", "recovery"):
            for version in versions:
                p = (per.get(version) or {}).get(policy) or {}
                seen = _runs(p.get("failures") or []) or "none"
                done = p.get("relaunches") if p.get("ready") else "gave up"
                row.append(f"{done} ({seen})")
        rows.append(row)
    return rows


def recovery_rows(rc: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, sc in (rc.get("scenarios") or {}).items():
        for i, policy in enumerate(("daemon", "recovery", "naive", "auto")):
            p = sc.get(policy, {})
            label = name if i == 0 else ""
            if _err(p):
                rows.append([label, policy, _err(p) or "", "", "", "", "", "", "", ""])
                continue
            outcome = "ready" if p.get("ready") else ("refused before launch (exit 2)" if p.get("refused") else "gave up")
            seen = _runs(p.get("failures") or []) or "none"
            rows.append([
                label,
                policy,
                outcome,
                _n(p.get("launches")),
                seen,
                _n(p.get("max_model_len")),
                _n(p.get("gpu_memory_utilization"), "{:g}"),
                _n(p.get("kv_cache_tokens")),
                _n(p.get("max_concurrency"), "{:.2f}×"),
                _n(p.get("context_kept"), "{:.1%}"),
            ])
    return rows


def _runs(kinds: list[Any]) -> str:
    """["a", "a", "b"] → "a ×2 → b"."""
    out: list[list[Any]] = []
    for kind in kinds:
        if out and out[-1][0] == kind:
            out[-1][1] += 1
        else:
            out.append([kind, 1])
    return " → ".join(f"{k} ×{n}" if n > 1 else str(k) for k, n in out)


def recovery_notes(rc: dict[str, Any]) -> list[str]:
    """What the daemon decided in each scenario, in its own words."""
    notes = []
    for name, sc in (rc.get("scenarios") or {}).items():
        d = sc.get("daemon", {})
        said = []
        first = d.get("first_launch") or {}
        if first:
            said.append("first launch " + ", ".join(f"{k} {v}" for k, v in first.items()))
        said += [r[:400] for r in d.get("decisions") or []]
        if d.get("refused"):
            said.append(str(d["refused"])[:400])
        if d.get("gave_up"):
            said.append("gave up: " + str(d["gave_up"])[:400])
        if said:
            notes.append(f"- `{name}` (daemon): " + "; then ".join(said))
    return notes


def frontdoor_section(fd: dict[str, Any]) -> list[str]:
    """The front door's cost (streaming through it against straight at the engine) and what it
    saves (failed requests across an engine kill and a restart, without and with it)."""
    bad = _err(fd)
    if bad:
        return [bad]
    out: list[str] = []
    p = fd.get("passthrough") or {}
    if p:
        out += [table(["clients", "tokens/s direct", "tokens/s through the door", "ratio", "TTFT p50 added",
                       "CPU per streamed token", "goals met"],
                      [[_n(p.get("clients")), _n(p.get("tokens_per_s_direct")), _n(p.get("tokens_per_s_door")),
                        _n(p.get("tokens_per_s_ratio"), "{:.3f}×"), _n(p.get("ttft_p50_added_ms"), "{:+.1f} ms"),
                        _n(p.get("door_cpu_us_per_token"), "{:.0f} µs"),
                        ", ".join(f"{k} {_ok(v)}" for k, v in (p.get("meets_goal") or {}).items())]]), ""]
    f = fd.get("failover") or {}
    rows = []
    for label, key in (("vLLM alone on the address", "direct"), ("through the front door", "through_door")):
        run = f.get(key) or {}
        cells = [label]
        for window in ("engine_killed", "restart"):
            w = run.get(window) or {}
            kinds = ", ".join(f"{k} {v}" for k, v in (w.get("failures") or {}).items())
            cells.append(f"{_n(w.get('failed'))} of {_n(w.get('requests'))} ({_n(w.get('failed_not_started'))} not"
                         f" started){': ' + kinds if kinds else ''}")
        rows.append(cells)
    if f:
        out += [table(["", "engine killed: failed (not yet started)", "`supervisor restart`: failed"], rows), ""]
    return out


def table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def measured(res: dict[str, dict[str, Any]], name: str, machine: dict[str, Any]) -> dict[str, Any]:
    """The machine facts a benchmark recorded when it ran (the whole run's where it has none)."""
    return (res.get(name) or {}).get("machine") or machine


def dates(res: dict[str, dict[str, Any]], machine: dict[str, Any]) -> str:
    """When the figures were measured: one date, or the first and the last."""
    seen = sorted({str(measured(res, name, machine).get("date")) for name in res} or {str(machine.get("date"))})
    return seen[0] if len(seen) == 1 else f"between {seen[0]} and {seen[-1]}"


def render(res: dict[str, dict[str, Any]], machine: dict[str, Any], quick: bool) -> str:
    parts = [
        "# Benchmark results",
        "",
        "Written by `python benchmarks/run_all.py`" + (" --quick" if quick else "")
        + " from the JSON each benchmark printed (results.json); no figure is typed by hand. "
        "The engine is the bundled vLLM simulator on a simulated RTX 4090 D, so these figures are the "
        "supervisor's own costs and reactions, not vLLM's.",
        "",
        "## Machine",
        "",
        table(["CPU", "cores", "memory", "Python", "OS"],
              [[machine.get("cpu"), machine.get("cores"), f"{machine.get('memory_gib')} GiB", machine.get("python"),
                machine.get("os")]]),
        "",
        "Each benchmark's own run (`--only` reruns one and keeps the others' figures and dates):",
        "",
        table(["benchmark", "measured", "load (1 min) at start"],
              [[name, measured(res, name, machine).get("date"), measured(res, name, machine).get("load_avg_1m")]
               for name in res]),
        "",
        "## CONTRACT performance figures",
        "",
        table(["figure", "target", "measured", "met"], contract_rows(res)),
        "",
        "## Recovery from startup memory failures",
        "",
        "Each scenario starts from the profile with the overrides below. daemon = the whole product "
        "(`supervisor up --simulate`: the planner picks the first launch, recovery handles the rest); recovery = "
        "failures.FailureClassifier + recovery.decide alone, relaunching the simulator from the failing arguments; "
        "naive = halve max_model_len after each failure (same attempt limit); auto = vLLM's `--max-model-len auto` "
        "(one launch, no retry). Context kept = final max_model_len / the largest context that fits at the final "
        "utilization (min(model limit, KV-cache tokens)).",
        "",
    ]
    rc = res.get("recovery", {})
    if not rc.get("scenarios"):
        parts.append(_err(rc) or "")
    else:
        scen = rc.get("scenarios") or {}
        versions = list(rc.get("vllm_versions") or [])
        if versions:
            parts += [
                "### Relaunches to ready, per vLLM version",
                "",
                "The same scenario on the simulator speaking each version (`LLM_SUPERVISOR_SIM_VLLM_VERSION`); "
                "relaunches (failures seen). 0.34's extensible KV cache starts where 0.26 refuses a short free "
                "memory, and sizes the cache after CUDA-graph capture, so some failures do not happen at all.",
                "",
                table(["scenario", *[f"daemon, {v}" for v in versions], *[f"recovery, {v}" for v in versions]],
                      version_rows(rc)),
                "",
            ]
        for version in versions or [""]:
            data = (rc.get("versions") or {}).get(version) or {"scenarios": scen}
            if version:
                parts += [f"### vLLM {version}", ""]
            parts.append(table(["scenario", "policy", "outcome", "launches", "failures seen", "max_model_len", "util",
                                "KV tokens", "concurrency", "context kept"], recovery_rows(data)))
            parts += ["", *recovery_notes(data), ""]
        parts.append("Scenarios: " + "; ".join(f"`{k}`: {v.get('scenario')}" for k, v in scen.items()) + ".")
    parts += ["", "## The front door", "",
              "`frontdoor.py`: streaming chat clients straight at the simulated engine and through the front door; then "
              "clients streaming at the profile's address while the EngineCore is SIGKILLed and while `supervisor "
              "restart` runs, with `frontdoor.enabled: false` and with the front door.", "",
              *frontdoor_section(res.get("frontdoor", {}))]
    parts += ["", "## Raw", "", "Every figure above, with more detail, is in `benchmarks/results.json`.", ""]
    return "\n".join(parts)


README_START, README_END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def readme_section(res: dict[str, dict[str, Any]], machine: dict[str, Any]) -> str:
    """The machine and the CONTRACT table, for the README (the rest stays in results.md)."""
    loads = sorted(x for x in (measured(res, name, machine).get("load_avg_1m") for name in res) if x is not None)
    load = (f"{loads[0]}" if loads[0] == loads[-1] else f"{loads[0]}–{loads[-1]}") if loads else machine.get("load_avg_1m")
    where = (f"Measured {dates(res, machine)} on {machine.get('cpu')}, {machine.get('cores')} cores, "
             f"{machine.get('memory_gib')} GiB, Python {machine.get('python')} (1-min load at start: "
             f"{load}), with the bundled simulator as the engine:")
    return "\n".join([where, "", table(["figure", "target", "measured", "met"], contract_rows(res))])


def write_readme(readme: Path, section: str) -> None:
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        log(f"run_all: no {README_START} … {README_END} markers in {readme}; README left alone")
        return
    readme.write_text(text[: start + len(README_START)] + "\n" + section + "\n" + text[end:], encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", choices=sorted(BENCHMARKS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--timeout", type=float, default=1200.0, help="per benchmark")
    ap.add_argument("--out", type=Path, default=HERE / "results.md")
    ap.add_argument("--readme", type=Path, default=REPO / "README.md", help="file whose benchmarks markers get the table")
    ap.add_argument("--render-only", action="store_true", help="rewrite the tables from results.json, run nothing")
    args = ap.parse_args()
    raw_path = args.out.with_suffix(".json")
    if args.render_only:
        saved = json.loads(raw_path.read_text())
        args.out.write_text(render(saved["results"], saved["machine"], saved.get("quick", False)))
        write_readme(args.readme, readme_section(saved["results"], saved["machine"]))
        return
    machine = machine_info()
    results: dict[str, dict[str, Any]] = {}
    if args.only and raw_path.is_file():  # keep the other benchmarks' last figures
        results = json.loads(raw_path.read_text()).get("results", {})
    for name in args.only or BENCHMARKS:
        results[name] = run_one(name, args.quick, args.timeout)
    raw_path.write_text(json.dumps({"machine": machine, "quick": args.quick, "results": results}, indent=1) + "\n")
    args.out.write_text(render(results, machine, args.quick))
    write_readme(args.readme, readme_section(results, machine))
    log(f"run_all: wrote {args.out}, {raw_path} and the table in {args.readme}")
    print(json.dumps({"results_md": str(args.out), "results_json": str(raw_path),
                      "errors": {k: v["error"] for k, v in results.items() if v.get("error")}}))


if __name__ == "__main__":
    main()
