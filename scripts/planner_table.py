#!/usr/bin/env python3
"""Print the planner's prediction for every shipped profile on its stated hardware, as a markdown
table (the README's "what fits" figures come from here, never typed by hand).

usage: python3 scripts/planner_table.py [--profiles-dir profiles] [--vllm-version 0.34.0,0.26.0]
                                        [--write docs/planner.md]

One table per vLLM version (default: the newest supported, which `plan` assumes when it cannot
tell, and 0.26.0, the version checked on real GPUs). --write replaces the text between the
`<!-- planner-table:start -->` and `<!-- planner-table:end -->` markers of that file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llm_supervisor.config.loader import list_profile_names, load_profile  # noqa: E402
from llm_supervisor.host import modelfiles  # noqa: E402
from llm_supervisor.vllm import cards, fit, memory, speed  # noqa: E402

CONTEXTS = (4096, 8192, 32768)
START, END = "<!-- planner-table:start -->", "<!-- planner-table:end -->"


def build_table(profiles_dir: Path, vllm_version: str) -> str:
    rows = [
        "| profile | hardware (NVML total per GPU) | model | parallel | util | weights / GPU | KV / token / GPU"
        " | available KV / GPU | KV tokens | launches with max_model_len | concurrency at "
        + " / ".join(f"{c // 1024}K" for c in CONTEXTS)
        + " | decode tok/s, 1 user | users at ≥ " + " / ".join(f"{r:g}" for r in speed.PLAN_RATES) + " tok/s each |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    for name in list_profile_names(profiles_dir):
        profile = load_profile(name, profiles_dir)
        hw = profile.hardware
        total = cards.stated_total_gib(hw)
        gpu = cards.gpu_label(hw.gpu_name)
        # the bundled config.json facts, never a local checkpoint: the table is the same everywhere
        shape = modelfiles.load_shape(str(modelfiles.bundled_config_path(profile.model.id)))
        args = profile.vllm
        ctx = fit.FitContext.of(shape, total, hw.gpu_count, target=profile.target, vllm_version=vllm_version,
                                recovery=profile.recovery, model=profile.model.id, gpu_name=gpu,
                                tensor_parallel=args.tensor_parallel_size)
        pred = fit.predict_args(ctx, args)
        model = speed.speed_model(ctx, args, pred)
        if model is not None:
            one = f"{model.at(1).per_user_tokens_per_s:.0f}"
            users = " / ".join(str(model.users_at_rate(r)[0]) for r in speed.PLAN_RATES)
        else:
            one, users = "—", "—"
        conc = []
        for ctx in CONTEXTS:
            fits = pred.fits_context(ctx) and ctx <= shape.context_limit
            conc.append(f"{pred.concurrency_at(ctx):.1f}" if fits else "—")
        par = f"TP {args.tensor_parallel_size}"
        if args.pipeline_parallel_size > 1:
            par += f" × PP {args.pipeline_parallel_size}"
        if args.data_parallel_size > 1:
            par += f" × DP {args.data_parallel_size}"
        rows.append(
            f"| `{name}` | {hw.gpu_count}× {gpu} ({total:.2f} GiB) | {profile.model.id} | {par}"
            f" | {args.gpu_memory_utilization:g} | {pred.weights_gib:.2f} GiB | {pred.kv_bytes_per_token // 1024} KiB"
            f" | {pred.available_kv_cache_gib:.2f} GiB | {pred.kv_cache_tokens:,} | {pred.max_model_len:,}"
            f" | {' / '.join(conc)} | {one} | {users} |"
        )
        for note in pred.notes:
            notes.append(f"- `{name}`: {note}")
        if pred.target is not None:
            verdict = "met" if pred.target_met else "NOT met"
            notes.append(f"- `{name}`: target {pred.target['min_concurrency']:g} requests of"
                         f" {pred.target['context']:,} tokens: {verdict}"
                         f" ({pred.concurrency_at(pred.target['context']):.2f} fit)")
        if not pred.fits:
            notes.append(f"- `{name}`: does NOT fit as configured")
    accounting = memory.accounting_for(vllm_version)
    out = [
        f"**vLLM {vllm_version}** (`{accounting}`): predicted with that version's memory accounting, no calibration"
        " (torch.compile cache cold),"
        " bundled config.json facts (no checkpoint on disk), vLLM's default max_num_batched_tokens /"
        " max_num_seqs for a GPU under 70 GiB (2048 / 256). Concurrency counts requests of that many"
        " tokens held in the KV cache at once (all data-parallel replicas together). Speed from the speed"
        f" model (vllm/speed.py), uncalibrated, for {speed.DEFAULT_WORKLOAD_PROMPT:,}-token prompts and"
        f" {speed.DEFAULT_WORKLOAD_OUTPUT:,}-token replies: a user's decode rate alone, and how many users"
        " (none queueing) each see at least that many tokens/s.",
        "",
        *rows,
    ]
    if notes:
        out += ["", *notes]
    return "\n".join(out) + "\n"


def build_tables(profiles_dir: Path, versions: list[str]) -> str:
    """One table per version, one after the other."""
    return "\n".join(build_table(profiles_dir, v) for v in versions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles-dir", type=Path, default=ROOT / "profiles")
    parser.add_argument("--vllm-version", default=f"{memory.DEFAULT_VLLM_VERSION},0.26.0",
                        help="comma-separated versions, one table each")
    parser.add_argument("--write", type=Path, help="replace the table between the markers in this file")
    opts = parser.parse_args(argv)
    table = build_tables(opts.profiles_dir, [v.strip() for v in opts.vllm_version.split(",") if v.strip()])
    if opts.write is None:
        sys.stdout.write(table)
        return 0
    text = opts.write.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"{opts.write}: no {START} … {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    opts.write.write_text(f"{head}{START}\n{table}{END}{tail}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
