"""`supervisor bench --find-capacity`: the most concurrent users the served model carries within
a service-level objective (SLO), found by a short, bounded search.

Users are closed loops, as in `bench`: each keeps one streaming request open and sends the next
when it ends. A level runs U users, their starts spread over about one request's duration (the
previous level's mean latency), and measures the first `rounds × U` requests (at least
MIN_MEASURED) sent once all U were active, keeping every user busy until the last of them ends.
Requests/s is U / mean latency (Little's law for U closed loops), tokens/s that × the mean
output. The search doubles U from 1 until a level
misses the SLO (or `max_users`, or the time budget), then bisects between the last level that met
it and the first that did not, to within `resolution` (10 %) or one user, in at most `max_levels`
levels. A level the time budget cuts off before it measured its requests is neither met nor
missed (unless the requests it did measure already miss the SLO): the search ends there and says
so, and a level is not started at all when the time left is shorter than the least it can take
(the fastest round seen so far at no more users, × its rounds). The result names the largest level
that met the SLO (`capacity_users`) with its
requests/s, tokens/s and TTFT/TPOT/latency percentiles, and where the engine saturated, read from
its /metrics: the first level with requests waiting in the engine, because the KV cache was full
(usage ≥ 95 %, or preemptions) or because of its batch limits (max_num_seqs or the token budget).

SLO keys (`--slo KEY=VALUE[,KEY=VALUE…]`):

    ttft_pNN=2s        time to first token, NNth percentile ≤ 2 s (also ms)
    tpot_pNN=60ms      time per output token after the first, (latency − TTFT)/(tokens − 1)
    latency_pNN=30s    request sent → stream ended
    user_tps=20        95 % of requests decode at ≥ 20 tokens/s (≡ tpot_p95 ≤ 1/20 s);
                       user_tps_pNN=20 for another share
    success_rate=0.99  share of requests that must succeed (default 0.99)

Workloads: `--prompt-tokens` and `--output-tokens` take a number (1024), a range (512-2048,
uniform) or a list to pick from (256,1024,4096); prompts are random token ids sent to
/v1/completions, so the engine sees exactly that many prompt tokens and no prefix-cache hits:
each run draws from a new seed (in the result's `workload`), since vLLM's prefix cache would
answer a second run's prompts, drawn alike, from the first run's blocks and skip their prefill.
`--workload FILE.jsonl` replays real requests instead: one JSON object a line, with `messages`
(sent to /v1/chat/completions) or `prompt` (/v1/completions), and `max_tokens` (else
--output-tokens). Every request sets vLLM's `ignore_eos`, so it generates exactly its output
length and runs compare.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import secrets
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import httpx

from llm_supervisor.api.client import users_meet
from llm_supervisor.bench.run import (
    Link, RequestResult, RequestSpec, _daemon_status, _Live, _one_request, _poll_metrics, _probe, bench_target,
    percentile, summarize,
)
from llm_supervisor.clock import Clock, SystemClock, first_of
from llm_supervisor.config.settings import Settings
from llm_supervisor.errors import BadInput
from llm_supervisor.vllm.metrics import engine_metrics
from llm_supervisor.vllm.speed import MeasuredPoint

MIN_MEASURED = 8
KV_FULL = 0.95
TOKEN_ID_RANGE = (16, 512)  # ordinary tokens in every tokenizer vLLM serves (small test tokenizers too)
MAX_STAGGER_S = 10.0
DRAIN_S = 10.0


class SloError(BadInput):
    """An --slo, workload or search option that cannot be used."""


# ---------------------------------------------------------------- the SLO


@dataclass(frozen=True)
class Limit:
    metric: str          # "ttft" | "tpot" | "latency" | "user_tps" | "success_rate"
    q: float | None      # percentile (of the request values), None for success_rate
    value: float         # seconds, tokens/s, or a fraction

    @property
    def key(self) -> str:
        if self.metric == "success_rate":
            return "success_rate"
        if self.metric == "user_tps":
            return "user_tps" if self.q == 95 else f"user_tps_p{self.q:g}"
        return f"{self.metric}_p{self.q:g}"

    def text(self) -> str:
        if self.metric == "success_rate":
            return f"success_rate ≥ {self.value:g}"
        if self.metric == "user_tps":
            return f"{self.q:g} % of requests at ≥ {self.value:g} tok/s"
        return f"{self.key} ≤ {_dur(self.value)}"


@dataclass(frozen=True)
class Slo:
    limits: tuple[Limit, ...]
    text: str

    @property
    def success_rate(self) -> float:
        return next((lim.value for lim in self.limits if lim.metric == "success_rate"), 0.99)

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, **{lim.key: lim.value for lim in self.limits}}


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$", re.I)
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:tok(?:ens)?/s|/s)?\s*$", re.I)
_PCT_KEY = re.compile(r"^(ttft|tpot|latency|user_tps)(?:_p(\d+(?:\.\d+)?))?$")


def _dur(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def parse_slo(text: str) -> Slo:
    """`ttft_p95=2s,tpot_p95=60ms` → Slo; every bad item is one problem line (exit 2)."""
    limits: list[Limit] = []
    items: list[str] = []  # what each limit was written as
    problems: list[str] = []
    allowed = "ttft_pNN, tpot_pNN, latency_pNN (durations: 2s, 500ms), user_tps[_pNN] (tokens/s), success_rate"
    for item in [i.strip() for i in text.split(",") if i.strip()]:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or not value.strip():
            problems.append(f"--slo {item}: expected KEY=VALUE (keys: {allowed})")
            continue
        if key == "success_rate":
            try:
                rate = float(value)
            except ValueError:
                rate = -1.0
            if not 0 < rate <= 1:
                problems.append(f"--slo {item}: success_rate is a fraction in (0, 1]")
                continue
            limits.append(Limit("success_rate", None, rate))
            items.append(item)
            continue
        m = _PCT_KEY.match(key)
        if not m:
            problems.append(f"--slo {item}: unknown key {key!r} (keys: {allowed})")
            continue
        metric, q = m.group(1), float(m.group(2)) if m.group(2) else None
        if metric != "user_tps" and q is None:
            problems.append(f"--slo {item}: say which percentile, e.g. {metric}_p95")
            continue
        q = 95.0 if q is None else q
        if not 0 < q <= 100:
            problems.append(f"--slo {item}: the percentile must be in (0, 100]")
            continue
        if metric == "user_tps":
            r = _RATE.match(value)
            if not r or float(r.group(1)) <= 0:
                problems.append(f"--slo {item}: user_tps is tokens/s per user, a positive number (e.g. 20)")
                continue
            limits.append(Limit("user_tps", q, float(r.group(1))))
            items.append(item)
            continue
        d = _DURATION.match(value)
        if not d or float(d.group(1)) <= 0:
            problems.append(f"--slo {item}: not a duration (e.g. 2s, 500ms)")
            continue
        seconds = float(d.group(1)) / (1000 if (d.group(2) or "s").lower() == "ms" else 1)
        limits.append(Limit(metric, q, seconds))
        items.append(item)
    given: dict[str, list[str]] = {}
    for lim, item in zip(limits, items):
        given.setdefault(lim.key, []).append(item)
    problems += [f"--slo {key}: given {len(same)} times ({', '.join(same)}); keep one" for key, same in given.items()
                 if len(same) > 1]
    if not problems and not [lim for lim in limits if lim.metric != "success_rate"]:
        problems.append(f"--slo {text!r}: name at least one latency or speed limit ({allowed})")
    if problems:
        raise SloError("bad --slo", problems)
    return Slo(tuple(limits), text)


# ---------------------------------------------------------------- the workload


@dataclass(frozen=True)
class Lengths:
    """A token count: fixed, uniform in a range, or picked from a list."""

    values: tuple[int, ...]
    uniform: bool = False
    text: str = ""

    @classmethod
    def parse(cls, text: str, option: str) -> "Lengths":
        raw = str(text).strip()
        try:
            if "-" in raw:
                lo, hi = (int(x) for x in raw.split("-", 1))
                if not 1 <= lo <= hi:
                    raise ValueError
                return cls((lo, hi), True, raw)
            values = tuple(int(x) for x in raw.split(",") if x.strip())
            if not values or min(values) < 1:
                raise ValueError
            return cls(values, False, raw)
        except ValueError:
            raise SloError("bad workload", [f"{option} {text}: a token count (1024), a range (512-2048) or a list"
                                            " (256,1024,4096) of positive integers"]) from None

    def draw(self, rng: random.Random) -> int:
        if self.uniform:
            return rng.randint(self.values[0], self.values[1])
        return self.values[0] if len(self.values) == 1 else rng.choice(self.values)

    @property
    def mean(self) -> float:
        return (self.values[0] + self.values[1]) / 2 if self.uniform else statistics.fmean(self.values)

    @property
    def fixed(self) -> bool:
        return not self.uniform and len(set(self.values)) == 1


@dataclass
class Workload:
    prompt: Lengths
    output: Lengths
    records: list[dict[str, Any]] = field(default_factory=list)   # a JSONL file's requests
    source: str = "synthetic"
    seed: int | None = None   # None: a new one for each run (fresh prompts, no prefix-cache hits)

    def __post_init__(self) -> None:
        if self.seed is None:
            self.seed = secrets.randbits(32)

    @classmethod
    def synthetic(cls, prompt_tokens: str | int = 512, output_tokens: str | int = 128,
                  seed: int | None = None) -> "Workload":
        return cls(Lengths.parse(str(prompt_tokens), "--prompt-tokens"),
                   Lengths.parse(str(output_tokens), "--output-tokens"), seed=seed)

    @classmethod
    def from_jsonl(cls, path: Path, output_tokens: str | int = 128, seed: int | None = None) -> "Workload":
        problems: list[str] = []
        records: list[dict[str, Any]] = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SloError("bad workload", [f"--workload {path}: cannot read ({exc.strerror or exc})"]) from None
        except UnicodeError:
            raise SloError("bad workload", [f"--workload {path}: not UTF-8 text (a JSONL file: one JSON request "
                                            "per line)"]) from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                problems.append(f"--workload {path}:{n}: not JSON")
                continue
            ok = isinstance(rec, dict) and (isinstance(rec.get("messages"), list) or isinstance(rec.get("prompt"), (str, list)))
            mt = rec.get("max_tokens") if isinstance(rec, dict) else None
            if not ok or (mt is not None and (not isinstance(mt, int) or isinstance(mt, bool) or mt < 1)):
                problems.append(f"--workload {path}:{n}: a request needs `messages` (a list) or `prompt`, and"
                                " `max_tokens` if given must be a positive integer")
                continue
            records.append(rec)
            if len(problems) >= 5:
                break
        if not records and not problems:
            problems.append(f"--workload {path}: no requests in the file")
        if problems:
            raise SloError("bad workload", problems)
        out = Lengths.parse(str(output_tokens), "--output-tokens")
        return cls(Lengths((0,)), out, records, str(path), seed)

    def to_json(self) -> dict[str, Any]:
        if self.records:
            return {"source": self.source, "requests": len(self.records)}
        return {"source": "synthetic", "prompt_tokens": self.prompt.text, "output_tokens": self.output.text,
                "mean_prompt_tokens": round(self.prompt.mean, 1), "mean_output_tokens": round(self.output.mean, 1),
                "seed": self.seed}

    def stream(self, model: str) -> Iterator[RequestSpec]:
        """An endless stream of requests (each user draws the next one)."""
        rng = random.Random(self.seed)
        options = {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True},
                   "temperature": 0.0, "ignore_eos": True}
        i = 0
        while True:
            if self.records:
                rec = self.records[i % len(self.records)]
                body = {**options, "model": model, "max_tokens": rec.get("max_tokens") or self.output.draw(rng)}
                if isinstance(rec.get("messages"), list):
                    yield RequestSpec("/v1/chat/completions", {**body, "messages": rec["messages"]})
                else:
                    yield RequestSpec("/v1/completions", {**body, "prompt": rec["prompt"]})
            else:
                ids = [rng.randrange(*TOKEN_ID_RANGE) for _ in range(self.prompt.draw(rng))]
                yield RequestSpec("/v1/completions", {**options, "model": model, "prompt": ids,
                                                      "max_tokens": self.output.draw(rng)})
            i += 1


# ---------------------------------------------------------------- one level


@dataclass
class Level:
    users: int
    results: list[RequestResult]
    started: list[float]          # send time of each result, since the level began
    ended: list[float]
    live: _Live
    duration_s: float
    timed_out: bool = False
    ok: bool = False
    violations: list[str] = field(default_factory=list)
    unfinished: bool = False      # cut off by the time budget before its verdict: neither met nor missed

    def judge(self, slo: Slo) -> None:
        """Met, missed, or unfinished: cut off by the time budget while what it measured (if
        anything) still met the SLO."""
        self.violations = check(slo, self)
        if self.timed_out:
            if self.results and self.violations:
                self.violations.append(f"the time budget cut the level off after {len(self.results)} measured requests")
            else:
                self.violations, self.unfinished = [], True
        self.ok = not self.violations and not self.unfinished

    def measured(self) -> list[tuple[RequestResult, float, float]]:
        return list(zip(self.results, self.started, self.ended))

    def summary(self) -> dict[str, Any]:
        rows = self.measured()
        ok = [r for r, _s, _e in rows if r.ok]
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        tpot = [tpot_of(r) for r in ok]
        tpot = [t for t in tpot if t is not None]
        rates = [r.decode_rate for r in ok if r.decode_rate is not None]
        latency = [r.latency_s for r in ok if r.latency_s]
        # Closed loop (Little's law): U users each with one request open, back to back
        req_s = self.users / statistics.fmean(latency) if latency else 0.0
        tokens = statistics.fmean([r.tokens for r in ok]) if ok else 0.0
        pre = self.live.preemptions
        return {
            "users": self.users, "ok": self.ok, "violations": list(self.violations),
            "requests": len(rows), "succeeded": len(ok),
            "success_rate": round(len(ok) / len(rows), 4) if rows else 0.0,
            "requests_per_s": round(req_s, 3),
            "tokens_per_s": round(req_s * tokens, 1),
            "per_user_tokens_per_s": round(statistics.median(rates), 2) if rates else None,
            "ttft_s": summarize(ttft), "tpot_s": summarize(tpot),
            "latency_s": summarize([r.latency_s for r in ok if r.latency_s is not None]),
            "engine_running_peak": None if self.live.running_peak is None else int(self.live.running_peak),
            "engine_waiting_peak": None if self.live.waiting_peak is None else int(self.live.waiting_peak),
            "kv_cache_usage_peak": None if self.live.kv_usage_peak is None else round(self.live.kv_usage_peak, 3),
            "preemptions": None if pre is None else int(pre[1] - pre[0]),
            "duration_s": round(self.duration_s, 2), "timed_out": self.timed_out, "unfinished": self.unfinished,
        }


def tpot_of(r: RequestResult) -> float | None:
    """Time per output token after the first: (last token − TTFT) / (tokens − 1)."""
    if r.ttft_s is None or r.last_token_s is None or r.tokens < 2:
        return None
    return (r.last_token_s - r.ttft_s) / (r.tokens - 1)


def check(slo: Slo, level: Level) -> list[str]:
    """The SLO's limits this level missed, one line each (empty: met)."""
    rows = level.measured()
    ok = [r for r, _s, _e in rows if r.ok]
    out: list[str] = []
    rate = len(ok) / len(rows) if rows else 0.0
    if rate + 1e-9 < slo.success_rate:
        errors: dict[str, int] = {}
        for r, _s, _e in rows:
            if not r.ok:
                errors[r.error or "unknown"] = errors.get(r.error or "unknown", 0) + 1
        out.append(f"success rate {rate:.1%} < {slo.success_rate:.0%} ({', '.join(f'{k} ×{v}' for k, v in errors.items())})")
    values = {"ttft": [r.ttft_s for r in ok if r.ttft_s is not None],
              "latency": [r.latency_s for r in ok if r.latency_s is not None],
              "tpot": [t for t in (tpot_of(r) for r in ok) if t is not None]}
    for lim in slo.limits:
        if lim.metric == "success_rate":
            continue
        if lim.metric == "user_tps":
            got = percentile(values["tpot"], lim.q or 95)
            if got is None:
                out.append(f"{lim.key}: no request produced two tokens")
            elif got > 1.0 / lim.value:
                out.append(f"{lim.key}: {lim.q:g} % of requests at ≥ {1 / got:.1f} tok/s < {lim.value:g}")
            continue
        got = percentile(values[lim.metric], lim.q or 95)
        if got is None:
            out.append(f"{lim.key}: no measurement")
        elif got > lim.value:
            out.append(f"{lim.key} {_dur(got)} > {_dur(lim.value)}")
    return out


async def _drained(link: Link, url: str, api_key: str | None, limit_s: float = DRAIN_S) -> None:
    """Wait until the engine runs nothing (the last level's cut-off requests are aborted), so a
    level's /metrics peaks are its own; give up quietly after `limit_s` or without /metrics."""
    deadline = link.clock.monotonic() + limit_s
    async with link.client(api_key, timeout=5.0) as client:
        while link.clock.monotonic() < deadline:
            try:
                resp = await client.get(url + "/metrics")
            except httpx.HTTPError:
                return
            if resp.status_code != 200:
                return
            m = engine_metrics(resp.text)
            if not (m.running or m.waiting):
                return
            await link.clock.sleep(0.05)


def measured_requests(users: int, rounds: int) -> int:
    """How many requests a level of `users` measures."""
    return max(MIN_MEASURED, rounds * users)


async def run_level(url: str, api_key: str | None, users: int, specs: Iterator[RequestSpec], *, rounds: int,
                    stagger_s: float, timeout_s: float, limit_s: float,
                    on_done: Callable[[int, int], None] | None = None, link: Link | None = None) -> Level:
    """U closed-loop users, starts spread over `stagger_s`. The first `rounds × users` requests
    (≥ MIN_MEASURED) sent once all users are active are measured; every user keeps sending until
    the last of them ends, so all ran under the full load. Ends early after `limit_s`."""
    link = link or Link()
    await _drained(link, url, api_key)
    live = _Live()
    want = measured_requests(users, rounds)
    full_at = stagger_s * (users - 1) / users if users > 1 else 0.0
    measured: list[tuple[RequestResult, float, float]] = []
    sent_in_window = 0
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=users + 4, max_keepalive_connections=users + 4)
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    t0 = link.clock.monotonic()
    async with link.client(api_key, limits=limits, timeout=timeout) as client, \
            link.client(api_key, timeout=5.0) as mclient:
        metrics_stop = asyncio.Event()
        poller = asyncio.create_task(_poll_metrics(link, mclient, url, live, metrics_stop))

        async def user(i: int) -> None:
            nonlocal sent_in_window
            if users > 1 and stagger_s > 0:
                await link.clock.sleep(stagger_s * i / users)
            while not stop.is_set():
                spec = next(specs)
                sent = link.clock.monotonic() - t0
                counted = sent >= full_at - 1e-6 and sent_in_window < want
                if counted:
                    sent_in_window += 1
                res = await _one_request(link, client, url, spec.body, live, spec.path)
                live.results.append(res)
                if counted:
                    measured.append((res, sent, link.clock.monotonic() - t0))
                    if on_done:
                        on_done(len(measured), want)
                    if len(measured) >= want:
                        stop.set()

        tasks = [asyncio.create_task(user(i)) for i in range(users)]
        timed_out = not (await first_of(link.clock, stop.wait(), limit_s))[0]
        for task in tasks:  # requests beyond the measured ones are cut off (vLLM aborts them)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        metrics_stop.set()
        await poller
    return Level(users, [m[0] for m in measured], [m[1] for m in measured], [m[2] for m in measured], live,
                 link.clock.monotonic() - t0, timed_out)


# ---------------------------------------------------------------- the search


@dataclass
class SearchOptions:
    max_users: int = 256
    rounds: int = 2
    resolution: float = 0.10
    max_levels: int = 12
    max_seconds: float = 900.0
    timeout_s: float = 600.0
    start_users: int = 1


def least_level_seconds(finished: Sequence[tuple[int, float]], users: int, rounds: int) -> float:
    """The least a level of `users` can take, from the levels that finished, as (users, seconds):
    the fastest round (a level's seconds over its requests per user) seen at no more users, × this
    level's requests per user; engine steps only lengthen as more requests run at once. 0 with
    nothing to go by."""
    per_round = [seconds * u / measured_requests(u, rounds) for u, seconds in finished if u <= users]
    return min(per_round) * measured_requests(users, rounds) / users if per_round else 0.0


def next_probe(ok: int, fail: int | None, resolution: float) -> int | None:
    """The next user count to try between the largest that met the SLO and the smallest that
    did not; None when they are close enough (one user, or `resolution` of the passing one)."""
    if fail is None:
        return None
    if fail - ok <= max(1, math.floor(resolution * ok)):
        return None
    return (ok + fail) // 2


def find_capacity(
    settings: Settings,
    slo: Slo,
    workload: Workload,
    *,
    url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    options: SearchOptions | None = None,
    progress: bool = True,
    clock: Clock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """Search for the largest load meeting `slo` (see the module docstring) and report it.
    `clock` and `transport` replace the machine's clock and the network (tests)."""
    opts = options or SearchOptions()
    link = Link(clock or SystemClock(), transport)
    if opts.max_users < opts.start_users or opts.start_users < 1:
        raise SloError("bad search", [f"--max-users {opts.max_users}: must be at least {max(1, opts.start_users)}"])
    url, status = bench_target(_daemon_status(settings), url)
    model = asyncio.run(_probe(link, url, api_key, model))
    specs = workload.stream(model)

    bar = task = None
    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("capacity: [bold]{task.fields[users]}[/bold] users"), BarColumn(),
                       MofNCompleteColumn(), TextColumn("{task.fields[seen]}"), TimeElapsedColumn(),
                       console=Console(stderr=True), transient=True)
        task = bar.add_task("capacity", total=1, users=0, seen="")

    levels: dict[int, Level] = {}
    order: list[int] = []
    t_start = link.clock.monotonic()
    stopped = "resolution"
    ok_users, fail_users = 0, None
    unmeasured: dict[str, Any] | None = None  # the level the time budget left without a verdict
    stagger = 0.0

    def seen() -> str:
        return " ".join(f"{u}{'✓' if levels[u].ok else '✗'}" for u in sorted(levels))

    def time_left() -> float:
        return opts.max_seconds - (link.clock.monotonic() - t_start)

    def out_of_budget(users: int) -> str | None:
        """Why the level of `users` may not run, if it may not."""
        nonlocal unmeasured
        if len(order) >= opts.max_levels:
            return "max_levels"
        left = time_left()
        need = least_level_seconds([(lv.users, lv.duration_s) for lv in levels.values() if not lv.timed_out],
                                   users, opts.rounds)
        if left <= 0 or need > left:
            unmeasured = {"users": users, "cut_off": False, "needed_s": round(need, 1), "left_s": round(max(left, 0.0), 1)}
            return "time_budget"
        return None

    def run(users: int) -> Level | None:
        """The level of `users`, measured and judged; None when the search ends before it or
        during it (`stopped` says why)."""
        nonlocal stagger, unmeasured, stopped
        if (why := out_of_budget(users)) is not None:
            stopped = why
            return None
        want = measured_requests(users, opts.rounds)
        if bar is not None and task is not None:
            bar.update(task, users=users, total=want, completed=0, seen=seen())

        def done(n: int, want: int) -> None:
            if bar is not None and task is not None:
                bar.update(task, completed=n)

        level = asyncio.run(run_level(url, api_key, users, specs, rounds=opts.rounds, stagger_s=stagger,
                                      timeout_s=opts.timeout_s, limit_s=time_left(), on_done=done, link=link))
        level.judge(slo)
        levels[users] = level
        order.append(users)
        lat = [r.latency_s for r in level.results if r.ok and r.latency_s]
        if lat:
            stagger = min(MAX_STAGGER_S, statistics.fmean(lat))
        if level.unfinished:
            unmeasured = {"users": users, "cut_off": True, "measured": len(level.results), "of": want}
            stopped = "time_budget"
            return None
        return level

    try:
        if bar is not None:
            bar.start()
        users = opts.start_users
        while True:  # ramp: double until a level misses the SLO
            if (level := run(users)) is None:
                break
            if not level.ok:
                fail_users = users
                break
            ok_users = users
            if users >= opts.max_users:
                stopped = "max_users"
                break
            users = min(users * 2, opts.max_users)
        while fail_users is not None:  # bisect
            probe = next_probe(ok_users, fail_users, opts.resolution)
            if probe is None:
                break
            if (level := run(probe)) is None:
                break
            if level.ok:
                ok_users = probe
            else:
                fail_users = probe
    finally:
        if bar is not None:
            bar.stop()
    return report(url, model, slo, workload, levels, order, ok_users, fail_users, stopped,
                  link.clock.monotonic() - t_start, status, link.clock.time(), unmeasured)


def _saturation(levels: dict[int, Level]) -> dict[str, Any] | None:
    """The first level at which requests waited inside the engine, and why."""
    for users in sorted(levels):
        s = levels[users].summary()
        kv = s["kv_cache_usage_peak"]
        pre = s["preemptions"] or 0
        waiting = s["engine_waiting_peak"] or 0
        if (kv is not None and kv >= KV_FULL) or pre > 0:
            cause = "kv_cache_full"
            detail = (f"at {users} users the KV cache was {kv:.0%} full" if kv is not None else f"at {users} users")
            detail += f", {pre} preemptions" if pre else ""
            detail += f", {waiting} requests waiting" if waiting else ""
        elif waiting > 0 and (s["engine_running_peak"] or 0) < users:
            # requests waited for a slot while fewer than all users' requests ran: the batch is capped
            cause = "waiting_queue"
            running = s["engine_running_peak"]
            detail = (f"at {users} users {waiting} requests waited while {running} ran with the KV cache"
                      + (f" {kv:.0%} full" if kv is not None else "") + ": max_num_seqs or the token budget caps the batch")
        else:
            continue
        return {"users": users, "cause": cause, "detail": detail, "engine_running_peak": s["engine_running_peak"],
                "engine_waiting_peak": waiting, "kv_cache_usage_peak": kv, "preemptions": pre}
    return None


def report(url: str, model: str, slo: Slo, workload: Workload, levels: dict[int, Level], order: list[int],
           ok_users: int, fail_users: int | None, stopped: str, duration: float,
           status: dict[str, Any] | None, now: float, unmeasured: dict[str, Any] | None = None) -> dict[str, Any]:
    summaries = {u: levels[u].summary() for u in order}
    best = summaries.get(ok_users) if ok_users else None
    sat = _saturation(levels)
    budget = "the time budget (--max-seconds) ended the search"
    if unmeasured and unmeasured["cut_off"]:
        budget += (f" during the {unmeasured['users']}-user level, {unmeasured['measured']} of its"
                   f" {unmeasured['of']} requests measured")
    elif unmeasured and unmeasured["left_s"] > 0:
        budget += (f": a {unmeasured['users']}-user level takes at least {unmeasured['needed_s']:g} s,"
                   f" {unmeasured['left_s']:g} s were left")
    if ok_users == 0 and fail_users is None and stopped == "time_budget":
        sentence = f"No level finished: {budget}."
    elif ok_users == 0:
        first = summaries[order[0]] if order else None
        why = "; ".join(first["violations"]) if first else "no level ran"
        sentence = f"Even 1 user misses the SLO ({why})."
    else:
        tail = {"resolution": f"; {fail_users} users did not",
                "max_users": " (the search stopped at --max-users)",
                "max_levels": f" (stopped after {len(order)} levels{f'; {fail_users} did not' if fail_users else ''})",
                "time_budget": f" ({budget}{f'; {fail_users} users did not meet it' if fail_users else ''})"}[stopped]
        assert best is not None
        sentence = (f"{ok_users} concurrent {users_meet(ok_users)} {slo.text}{tail}: {best['requests_per_s']:g} requests/s,"
                    f" {best['tokens_per_s']:,.0f} tokens/s, TTFT p95 {_fmt_s(best['ttft_s']['p95'])},"
                    f" TPOT p95 {_fmt_s(best['tpot_s']['p95'])}.")
    if sat:
        sentence += f" The engine saturated {sat['detail']}."
    engine = None
    if status:
        facts = status.get("facts") if isinstance(status.get("facts"), dict) else {}
        engine = {"profile": status.get("profile"), "model": status.get("model"), "argv": status.get("argv"),
                  "gpus": [g.get("name") for g in status.get("gpus") or [] if isinstance(g, dict)],
                  "vllm_version": facts.get("vllm_version"), "kv_cache_tokens": status.get("kv_cache_tokens"),
                  "max_model_len": status.get("max_model_len")}
    return {
        "url": url, "model": model, "slo": slo.to_json(), "workload": workload.to_json(),
        "capacity_users": ok_users,
        "first_failing_users": fail_users,
        "capacity": best,
        "saturation": sat,
        "levels": [summaries[u] for u in order],
        "search": {"levels": len(order), "stopped": stopped, "duration_s": round(duration, 1),
                   "unmeasured": unmeasured},
        "engine": engine,
        "measured_at": now,
        "summary": sentence,
    }


def _fmt_s(x: float | None) -> str:
    return "–" if x is None else _dur(x)


def calibration_points(result: dict[str, Any], workload: Workload) -> list[MeasuredPoint]:
    """The finished levels as speed-model calibration points (synthetic workloads only: the
    lengths are known), each with the engine's running peak and whether requests queued."""
    if workload.records:
        return []
    out = []
    for s in result["levels"]:
        if not s["succeeded"] or not s["per_user_tokens_per_s"] or s.get("unfinished"):
            continue
        out.append(MeasuredPoint(
            users=s["users"], prompt_tokens=round(workload.prompt.mean), output_tokens=round(workload.output.mean),
            per_user_tokens_per_s=s["per_user_tokens_per_s"], running=s["engine_running_peak"],
            ttft_s=s["ttft_s"]["p50"], tokens_per_s=s["tokens_per_s"], queued=bool(s["engine_waiting_peak"])))
    return out


def nothing_measured(result: dict[str, Any]) -> str | None:
    """Why the search measured nothing to keep, plot or learn speed from (an endpoint that never
    answered, or a time budget shorter than one request); None when something was measured."""
    if any(level["succeeded"] for level in result["levels"]):
        return None
    if asked := sum(level["requests"] for level in result["levels"]):
        return f"none of {asked} requests succeeded"
    return "no request finished within the time budget (--max-seconds)"


def engine_key(result: dict[str, Any]) -> str:
    """Where the state file keeps this result: the daemon's profile, else the URL."""
    engine = result.get("engine") or {}
    return str(engine.get("profile") or f"url:{result['url']}")


# ---------------------------------------------------------------- rendering


def format_capacity(result: dict[str, Any]) -> "Any":
    """The levels as a rich table, the summary sentence under it."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"capacity of {result['model']} at {result['url']} for {result['slo']['text']}",
                  header_style="bold")
    for col in ("users", "SLO", "req/s", "tok/s", "per user", "TTFT p95", "TPOT p95", "running/waiting", "KV"):
        table.add_column(col, justify="left" if col == "SLO" else "right", no_wrap=True)
    missed = []
    for s in sorted(result["levels"], key=lambda s: s["users"]):
        kv = s["kv_cache_usage_peak"]
        verdict = ("met", "green") if s["ok"] else ("cut off", "yellow") if s.get("unfinished") else ("missed", "red")
        table.add_row(
            str(s["users"]), Text(verdict[0], style=verdict[1]),
            f"{s['requests_per_s']:g}", f"{s['tokens_per_s']:,.0f}",
            "–" if s["per_user_tokens_per_s"] is None else f"{s['per_user_tokens_per_s']:.1f}",
            _fmt_s(s["ttft_s"]["p95"]), _fmt_s(s["tpot_s"]["p95"]),
            f"{'–' if s['engine_running_peak'] is None else s['engine_running_peak']}/"
            f"{'–' if s['engine_waiting_peak'] is None else s['engine_waiting_peak']}",
            "–" if kv is None else f"{kv:.0%}")
        if s["violations"]:
            missed.append(f"{s['users']} users: " + "; ".join(s["violations"]))
    lines = [table, *(Text(m, style="red") for m in missed), Text(result["summary"], style="bold")]
    if result.get("plot"):
        lines.append(Text(f"plot: {result['plot']}"))
    return Group(*lines)


def render_svg(result: dict[str, Any], width: int = 720, height: int = 520) -> str:
    """Latency (TTFT and TPOT p95) and throughput against users, as an SVG document: two panels
    sharing the users axis, the SLO's limits dashed, the capacity marked."""
    rows = sorted((s for s in result["levels"] if not s.get("unfinished")), key=lambda s: s["users"])
    users = [s["users"] for s in rows] or [1]
    left, right, top, gap, bottom = 70, 30, 40, 50, 50
    panel_h = (height - top - gap - bottom) / 2
    x_max = max(users) * 1.05
    log_x = max(users) >= 8

    def x(u: float) -> float:
        span = width - left - right
        if log_x:
            return left + span * math.log2(max(u, 1)) / math.log2(max(x_max, 2))
        return left + span * u / x_max

    def series(values: Sequence[float | None]) -> list[tuple[float, float]]:
        return [(u, v) for u, v in zip(users, values) if v is not None]

    ttft = series([s["ttft_s"]["p95"] for s in rows])
    tpot = series([s["tpot_s"]["p95"] for s in rows])
    tput = series([s["tokens_per_s"] for s in rows])
    limits = {k: v for k, v in result["slo"].items() if k.startswith(("ttft_p", "tpot_p"))}
    lat_max = max([v for _u, v in ttft + tpot] + list(limits.values()) + [1e-3]) * 1.15
    tput_max = max([v for _u, v in tput] + [1.0]) * 1.15
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="22" font-size="14" font-weight="bold">{_esc(result["model"])}: '
           f'{result["capacity_users"]} {users_meet(result["capacity_users"])} '
           f'{_esc(result["slo"]["text"])}</text>']

    def panel(y0: float, vmax: float, lines: list[tuple[str, str, list[tuple[float, float]]]], unit: str,
              marks: dict[str, float]) -> None:
        def y(v: float) -> float:
            return y0 + panel_h - panel_h * v / vmax
        out.append(f'<rect x="{left}" y="{y0}" width="{width - left - right}" height="{panel_h}" fill="none" stroke="#999"/>')
        for i in range(5):
            v = vmax * i / 4
            out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" fill="#555">{_tick(v, unit)}</text>')
        for name, value in marks.items():
            out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                       f'stroke="#c33" stroke-dasharray="5,4"/><text x="{width - right - 4}" y="{y(value) - 4:.1f}" '
                       f'text-anchor="end" fill="#c33">SLO {_esc(name)}</text>')
        for i, (name, color, pts) in enumerate(lines):
            if pts:
                path = " ".join(f"{x(u):.1f},{y(v):.1f}" for u, v in pts)
                out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
                out.extend(f'<circle cx="{x(u):.1f}" cy="{y(v):.1f}" r="3" fill="{color}"/>' for u, v in pts)
            out.append(f'<text x="{left + 8 + 110 * i}" y="{y0 + 14}" fill="{color}">{_esc(name)}</text>')

    panel(top, lat_max, [("TTFT p95", "#1f77b4", ttft), ("TPOT p95", "#ff7f0e", tpot)], "s", limits)
    panel(top + panel_h + gap, tput_max, [("tokens/s", "#2ca02c", tput)], "", {})
    cap = result["capacity_users"]
    if cap:
        out.append(f'<line x1="{x(cap):.1f}" x2="{x(cap):.1f}" y1="{top}" y2="{height - bottom}" stroke="#2ca02c" '
                   f'stroke-dasharray="2,3"/><text x="{x(cap) + 4:.1f}" y="{height - bottom - 4}" fill="#2ca02c">'
                   f'capacity {cap}</text>')
    for u in users:
        out.append(f'<text x="{x(u):.1f}" y="{height - bottom + 16}" text-anchor="middle" fill="#555">{u}</text>')
    out.append(f'<text x="{(width + left - right) / 2}" y="{height - 12}" text-anchor="middle">concurrent users'
               f'{" (log scale)" if log_x else ""}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _tick(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.1f} s"
    return f"{v:,.0f}"


def _esc(text: Any) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
