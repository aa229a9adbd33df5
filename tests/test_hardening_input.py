"""Bad input never crashes: every invalid profile, `--set`, setting, file or model path ends in
exit 2 with one `error: …` line per problem that names the file (or `--set`) and the key, and no
traceback; every valid profile round-trips through `profiles show`. Corrupt state and calibration
files are set aside with a warning, never a crash.

Property tests run through the library (load_profile raising ProfileError with .problems) for
speed; a handful of the same inputs go through `python -m llm_supervisor` for the exit code."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hardening_utils import REPO, assert_bad_input, cli, clean_env
from llm_supervisor.errors import ProfileError, SupervisorError
from llm_supervisor.config.loader import load_profile, profile_to_yaml, validate_profile
from llm_supervisor.config.profile import Profile

PROFILES = REPO / "profiles"
SHIPPED: dict[str, dict[str, Any]] = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(PROFILES.glob("*.yaml"))}
WORK = Path()  # set per module run, under pytest's own temporary folder (see _work)
PROP = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])



@pytest.fixture(scope="module", autouse=True)
def _work(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Hypothesis examples cannot take tmp_path (function-scoped): they write under one folder
    of pytest's per module, which pytest removes with its other temporary folders."""
    global WORK
    WORK = tmp_path_factory.mktemp("hardening-input")


# ------------------------------------------------------------------ strategies

junk = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
key_name = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True)


def paths(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a profile, sections included."""
    out = []
    for key, value in data.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += paths(value, (*prefix, key))
    return out


def set_at(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


@st.composite
def mutated_profiles(draw: st.DrawFn) -> tuple[str, list[tuple[str, tuple[str, ...]]]]:
    """YAML text of a shipped profile after 1-3 random mutations, and what was mutated."""
    data = copy.deepcopy(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    done: list[tuple[str, tuple[str, ...]]] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["junk", "junk", "unknown", "delete", "range"]))
        candidates = paths(data)
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        if kind == "junk":
            set_at(data, path, draw(junk))
        elif kind == "range":
            set_at(data, path, draw(st.sampled_from([0, -1, 10**9, 1.5, -0.5, 1e308, 65536, 2.0])))
        elif kind == "delete":
            node = data
            for part in path[:-1]:
                node = node[part]
            del node[path[-1]]
        else:  # an unknown key next to a real one
            sections = [p for p in candidates if isinstance(_get(data, p), dict)] or [()]
            path = draw(st.sampled_from([(), *sections]))
            new = draw(key_name)
            node = _get(data, path) if path else data
            assume(new not in node)
            node[new] = draw(junk)
            path = (*path, new)
        done.append((kind, path))
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True), done


def _get(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


@st.composite
def broken_yaml(draw: st.DrawFn) -> str:
    """A shipped profile's text cut short, or with random characters spliced in."""
    text = (PROFILES / f"{draw(st.sampled_from(sorted(SHIPPED)))}.yaml").read_text()
    at = draw(st.integers(0, len(text)))
    if draw(st.booleans()):
        return text[:at]
    noise = draw(st.text(alphabet=st.sampled_from(list(":-[]{}&*!|>'\"%@`#\t\n ,?") + ["a", "1"]), min_size=1, max_size=6))
    return text[:at] + noise + text[at:]


# ------------------------------------------------------------------ the invariant


def check_load(path: Path, overrides: list[str] | None = None) -> Profile | list[str]:
    """load_profile either returns a Profile that round-trips through `profiles show`, or raises
    ProfileError whose problems are single clean lines naming the file or the --set."""
    try:
        profile = load_profile(str(path), PROFILES, overrides=overrides or [])
    except ProfileError as exc:
        assert exc.problems, exc.message
        for line in exc.problems:
            assert "\n" not in line and "\r" not in line and line == line.strip(), repr(line)
            assert line.startswith((f"{path}: ", "--set ")), line
            assert len(line) < 600, line
            assert "Traceback" not in line
        return exc.problems
    # valid: `profiles show` re-loads to the same profile (secrets are masked, so compare without)
    shown = profile_to_yaml(profile)
    again = validate_profile(yaml.safe_load(shown), "shown")
    assert _comparable(again) == _comparable(profile), shown
    return profile


def _comparable(profile: Profile) -> dict[str, Any]:
    data = profile.model_dump(mode="json")
    data["vllm"].pop("api_key", None)
    from llm_supervisor.config.redaction import Redactor

    redactor = Redactor.from_inputs(None, profile)  # what `profiles show` masks: the same one redaction
    data["env"] = redactor.env(data["env"])
    data["vllm"]["extra_args"] = redactor.argv(data["vllm"]["extra_args"])
    return redactor.value(data)


def write(text: str, name: str = "p.yaml") -> Path:
    folder = Path(tempfile.mkdtemp(dir=WORK))
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ properties


def test_shipped_profiles_round_trip() -> None:
    for name in SHIPPED:
        assert isinstance(check_load(PROFILES / f"{name}.yaml"), Profile)


@PROP
@given(mutated_profiles())
def test_mutated_profiles_load_or_fail_cleanly(case: tuple[str, list[tuple[str, tuple[str, ...]]]]) -> None:
    text, mutations = case
    path = write(text)
    outcome = check_load(path)
    if isinstance(outcome, list):
        joined = "\n".join(outcome)
        # some line names a key that was touched (or its section, for cross-key rules)
        named = {part for _, p in mutations for part in p}
        assert any(str(part) in joined for part in named) or "(top level)" in joined, (mutations, outcome)
    else:  # every mutation that survived validation left a profile the planner can handle
        assert all(kind in ("junk", "range", "delete", "unknown") for kind, _ in mutations)


@PROP
@given(broken_yaml())
def test_broken_yaml_loads_or_fails_cleanly(text: str) -> None:
    check_load(write(text))


@PROP
@given(st.one_of(junk, st.lists(junk, max_size=3), st.text(max_size=30)))
def test_non_mapping_top_level_is_one_line(value: Any) -> None:
    assume(not isinstance(value, dict))
    path = write(yaml.safe_dump(value))
    problems = check_load(path)
    assert isinstance(problems, list) and len(problems) == 1
    assert "(top level)" in problems[0] or "not valid YAML" in problems[0]


SET_KEYS = [
    "vllm.port", "vllm.max_model_len", "vllm.gpu_memory_utilization", "vllm.tensor_parallel_size",
    "vllm.enforce_eager", "vllm.dtype", "vllm.kv_cache_dtype", "vllm.extra_args", "vllm.max_num_seqs",
    "vllm.block_size", "vllm.host", "hardware.gpu_count", "hardware.gpu_name", "model.id",
    "recovery.max_attempts", "recovery.backoff_initial_s", "recovery.min_max_model_len",
    "affinity.cpus", "affinity.mode", "env.OMP_NUM_THREADS", "target.context", "name", "vllm",
]
set_values = st.one_of(
    st.text(max_size=15),
    st.integers(-5, 10**6).map(str),
    st.sampled_from(["0", "-1", "1e309", ".nan", "[1, 2]", "{a: 1}", "true", "~", "'[", "0x10", "1_000", "&a [*a]"]),
)
set_texts = st.one_of(
    st.tuples(st.sampled_from(SET_KEYS), set_values).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(st.sampled_from(["vllm", "recovery", "hardware"]), key_name, set_values).map(lambda t: f"{t[0]}.{t[1]}={t[2]}"),
    st.text(max_size=20),  # anything at all, with or without "="
)


@PROP
@given(st.sampled_from(sorted(SHIPPED)), st.lists(set_texts, min_size=1, max_size=4))
def test_random_set_overrides_apply_or_fail_cleanly(name: str, overrides: list[str]) -> None:
    outcome = check_load(PROFILES / f"{name}.yaml", overrides)
    if isinstance(outcome, Profile):
        return
    # a problem caused by a --set names that --set
    for line in outcome:
        if line.startswith("--set "):
            keys = [o.split("=", 1)[0] for o in overrides]
            assert any(line.startswith((f"--set {k.strip()}", f"--set {k!r}"[:20], f"--set {o!r}"[:20]))
                       for k, o in zip(keys, overrides)), (line, overrides)


@st.composite
def valid_variants(draw: st.DrawFn) -> str:
    """A shipped profile with in-range but unusual values (huge, tiny, absent)."""
    data = copy.deepcopy(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    floor = data["recovery"].get("min_max_model_len", 2048)
    v = data["vllm"]
    v["max_model_len"] = draw(st.one_of(st.none(), st.integers(floor, 10**7)))
    v["gpu_memory_utilization"] = draw(st.floats(0.01, 1.0))
    v["max_num_seqs"] = draw(st.one_of(st.none(), st.integers(1, 10**6)))
    v["block_size"] = draw(st.sampled_from([None, 1, 8, 16, 32, 1024]))
    v["kv_cache_dtype"] = draw(st.sampled_from(["auto", "fp8", "bfloat16"]))
    v["enforce_eager"] = draw(st.booleans())
    data["hardware"]["gpu_memory_gib"] = draw(st.floats(0.5, 1024))
    data["model"]["id"] = draw(st.sampled_from(["Qwen/Qwen3-4B", "Qwen/Qwen3-8B", "Qwen/Qwen3-32B-AWQ", "Nobody/Unknown-1B"]))
    data["recovery"]["startup_timeout_s"] = draw(st.floats(0.001, 7 * 86400))  # bounded: at most a week
    data["target"] = draw(st.one_of(st.none(), st.fixed_dictionaries(
        {"min_concurrency": st.floats(0.001, 100000), "context": st.integers(16, 10**7)})))
    return yaml.safe_dump(data, sort_keys=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_variants())
def test_valid_variants_plan_or_refuse_cleanly(text: str) -> None:
    """What validates also plans (simulated), or is refused as bad input: never a crash."""
    from llm_supervisor.planning.launch import build_plan
    from llm_supervisor.config.settings import Settings

    path = write(text)
    outcome = check_load(path)
    assert isinstance(outcome, Profile), outcome
    folder = Path(tempfile.mkdtemp(dir=WORK))
    settings_ = Settings(state_dir=folder / "state", profiles_dir=PROFILES)
    os.environ["LLM_SUPERVISOR_SIM_GPU_DIR"] = str(folder / "simgpu")
    try:
        plan = build_plan(settings_, outcome, simulate=True)
        json.dumps(plan.to_json(), default=str)
    except SupervisorError as exc:
        assert exc.lines()
    finally:
        os.environ.pop("LLM_SUPERVISOR_SIM_GPU_DIR", None)


def test_set_errors_name_the_set_and_mask_secrets(tmp_path: Path) -> None:
    secret = "sk-SECRETSETVALUE123"
    with pytest.raises(ProfileError) as info:
        load_profile("4090d-qwen3-4b", PROFILES, overrides=[
            "vllm.port=abc", f"vllm.api_key={secret}", "vllm.extra_args=[1]", "recovery.bogus=1"])
    lines = info.value.problems
    assert lines[0] == "--set vllm.port: Input should be a valid integer, unable to parse string as an integer (got 'abc')"
    assert any(ln.startswith("--set vllm.extra_args: vllm.extra_args.0: ") for ln in lines)
    assert any(ln.startswith("--set recovery.bogus: unknown key (allowed: ") for ln in lines)
    assert len(lines) == 3 and secret not in "\n".join(lines)
    # a bad value for the key itself is shown masked
    with pytest.raises(ProfileError) as info:
        load_profile("4090d-qwen3-4b", PROFILES, overrides=[f"env.HF_TOKEN={12345}"])
    assert info.value.problems == ["--set env.HF_TOKEN: Input should be a valid string (got ***)"]


def test_long_values_are_cut_in_error_lines(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as info:
        load_profile("4090d-qwen3-4b", PROFILES, overrides=["vllm.dtype=" + "x" * 5000])
    (line,) = info.value.problems
    assert line.startswith("--set vllm.dtype: must be ") and len(line) < 300


# ------------------------------------------------------------------ through the command line

CLI_CASES = {
    "non-mapping": ("- 1\n- 2\n", [], 1),
    "invalid yaml": ("name: [unclosed\nhardware: {\n", [], 1),
    "wrong types": ("name: x\nhardware: {gpu_name: a, gpu_count: two, gpu_memory_gib: -1}\nmodel: {id: m}\n", [], 2),
    "unknown keys": ("name: x\nhardware: {gpu_name: a, gpu_count: 1, gpu_memory_gib: 24}\nmodel: {id: m}\nvlm: {}\n"
                     "vllm: {prot: 1}\n", [], 2),
    "bad sets": (None, ["vllm.port=99999", "vllm.gpu_memory_utilization=2", "nonsense"], 1),
    "many": ("name: 'bad name'\nhardware: {gpu_name: '[', gpu_count: 0, gpu_memory_gib: 24}\nmodel: {id: ''}\n", [], 4),
}


@pytest.mark.parametrize("label", sorted(CLI_CASES))
def test_cli_bad_profiles_exit_2_one_line_each(tmp_path: Path, label: str) -> None:
    text, sets, count = CLI_CASES[label]
    path = PROFILES / "4090d-qwen3-4b.yaml" if text is None else tmp_path / "p.yaml"
    if text is not None:
        path.write_text(text)
    args = ["plan", "--profile", str(path), "--simulate"]
    for item in sets:
        args += ["--set", item]
    lines = assert_bad_input(cli(args, clean_env(tmp_path)), count)
    try:
        load_profile(str(path), PROFILES, overrides=sets)
        expected = None
    except ProfileError as exc:
        expected = [f"error: {p}" for p in exc.problems]
    assert lines == expected


def test_cli_unreadable_profiles(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01name: x\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"name: x\x00\n")
    cases = {folder: "is a directory", fifo: "not a regular file", binary: "cannot read (UnicodeDecodeError",
             empty: "(top level): must be a mapping", nul: "not valid YAML",
             tmp_path / "missing.yaml": "no such profile file"}
    for path, want in cases.items():
        (line,) = assert_bad_input(cli(["plan", "--profile", str(path)], env, timeout=30), 1)
        assert line.startswith(f"error: {path}: ") and want in line, line
    (line,) = assert_bad_input(cli(["plan", "--profile", "no-such-profile"], env), 1)
    assert line.startswith("error: --profile: no profile named 'no-such-profile'") and "4090d-qwen3-4b" in line


@pytest.mark.parametrize("variable,value", [
    ("LLM_SUPERVISOR_API_PORT", "abc"), ("LLM_SUPERVISOR_API_PORT", "70000"),
    ("LLM_SUPERVISOR_STOP_TIMEOUT_S", "-1"), ("LLM_SUPERVISOR_ENGINE_COMMAND", "  "),
    ("LLM_SUPERVISOR_LOG_MAX_BYTES", "lots"),
])
def test_cli_malformed_settings_exit_2_one_line(tmp_path: Path, variable: str, value: str) -> None:
    env = clean_env(tmp_path, **{variable: value})
    (line,) = assert_bad_input(cli(["plan", "--profile", "4090d-qwen3-4b", "--simulate"], env), 1)
    assert line.startswith(f"error: settings: {variable}: "), line


def test_cli_two_malformed_settings_two_lines(tmp_path: Path) -> None:
    env = clean_env(tmp_path, LLM_SUPERVISOR_API_PORT="abc", LLM_SUPERVISOR_LOG_BACKUPS="-3")
    lines = assert_bad_input(cli(["plan", "--profile", "4090d-qwen3-4b"], env), 2)
    assert {ln.split(":")[2].strip() for ln in lines} == {"LLM_SUPERVISOR_API_PORT", "LLM_SUPERVISOR_LOG_BACKUPS"}


def test_cli_missing_model_folder(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    (line,) = assert_bad_input(cli(["plan", "--profile", "4090d-qwen3-4b", "--model", "/nonexistent/model"], env), 1)
    assert line.startswith("error: --model /nonexistent/model: no such folder"), line
    profile = tmp_path / "local.yaml"
    profile.write_text("name: local\nhardware: {gpu_name: 'RTX 4090', gpu_count: 1, gpu_memory_gib: 24}\n"
                       "model: {id: ./no-such-model}\n")
    (line,) = assert_bad_input(cli(["up", "--profile", str(profile), "--simulate"], env), 1)
    assert line.startswith(f"error: {profile}: model.id ./no-such-model: no such folder"), line
    # a Hugging Face id is not a path: planned as before (from the bundled config facts)
    ok = cli(["plan", "--profile", "4090d-qwen3-4b", "--model", "Qwen/Qwen3-8B", "--simulate", "--json"], env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["model"] == "Qwen/Qwen3-8B"


@pytest.mark.parametrize("content,want", [
    (b"", "empty"),
    (bytes(range(256)) * 64, ""),
    (b"hello world\nthis is a shopping list\nmilk\n" * 50, ""),
    (b"\xff\xfe\xfa" * 1000, ""),
])
def test_diagnose_refuses_non_vllm_files(tmp_path: Path, content: bytes, want: str) -> None:
    path = tmp_path / "some.log"
    path.write_bytes(content)
    (line,) = assert_bad_input(cli(["diagnose", str(path)], clean_env(tmp_path)), 1)
    assert str(path) in line and want in line, line
    (line,) = assert_bad_input(cli(["diagnose", str(tmp_path)], clean_env(tmp_path)), 1)
    assert "directory" in line


# ------------------------------------------------------------------ corrupt state and calibration

CORRUPT = {
    "truncated": b'{"version": 1, "profiles": {"a": {"history": [{"at": "20',
    "binary": bytes(range(256)),
    "wrong shape": b'{"version": 1, "profiles": []}',
    "a list": b"[1, 2, 3]",
    "bad entries": json.dumps({"version": 1, "profiles": {
        "x": "not an object", "y": {"history": "nope", "last_good": {"requested": {}, "args": {"max_model_len": "abc"}}},
    }}).encode(),
}


@pytest.mark.parametrize("label", sorted(CORRUPT))
def test_corrupt_state_file_is_set_aside_with_a_warning(tmp_path: Path, label: str) -> None:
    from llm_supervisor.store.state import StateStore

    (tmp_path / "state.json").write_bytes(CORRUPT[label])
    store = StateStore(tmp_path)
    assert store.warnings and all(str(tmp_path / "state.json") in w for w in store.warnings)
    assert store.last_good("y") is None and store.last_good("x") is None
    store.record("x", {"event": "launch"})
    store.remember_ready("y", {}, {"max_model_len": 4096}, {})
    store.save()
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["profiles"]["y"]["last_good"]["args"] == {"max_model_len": 4096}
    assert saved["profiles"]["x"]["history"] == [{"event": "launch"}]


def test_state_file_that_is_a_directory_is_a_warning(tmp_path: Path) -> None:
    from llm_supervisor.store.state import StateStore

    (tmp_path / "state.json").mkdir()
    store = StateStore(tmp_path)
    assert store.warnings and "unreadable" in store.warnings[0]
    store.record("k", {"event": "x"})
    store.save()  # cannot replace a directory: logged, not raised


def test_plan_with_corrupt_calibration_warns_and_leaves_the_file(tmp_path: Path) -> None:
    # like the state file: `plan` may run beside the daemon that owns calibration.json
    env = clean_env(tmp_path)
    state = Path(env["LLM_SUPERVISOR_STATE_DIR"])
    state.mkdir(parents=True)
    for content in (b'{"format": 1, "entries": {"k": {"mod', b"\x00\xff\xfe", b'{"format": 1, "entries": {"k": 5}}'):
        (state / "calibration.json").write_bytes(content)
        result = cli(["plan", "--profile", "4090d-qwen3-4b", "--simulate", "--json"], env)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        warnings = json.loads(result.stdout)["warnings"]
        assert any("calibration" in w for w in warnings), warnings
        assert (state / "calibration.json").read_bytes() == content
        assert not list(state.glob("calibration.json.corrupt-*"))


def test_plan_with_corrupt_state_warns_and_leaves_the_file(tmp_path: Path) -> None:
    # `plan` reads the state a running daemon may own: it says the file is unusable, plans
    # without it and leaves it where it is (the daemon sets it aside when it starts)
    env = clean_env(tmp_path)
    state = Path(env["LLM_SUPERVISOR_STATE_DIR"])
    state.mkdir(parents=True)
    (state / "state.json").write_bytes(b'{"version": 1, "profiles": [')
    result = cli(["plan", "--profile", "4090d-qwen3-4b", "--simulate", "--json"], env)
    assert result.returncode == 0, result.stderr
    warnings = json.loads(result.stdout)["warnings"]
    assert any(w.startswith(f"{state / 'state.json'}: corrupt (") and w.endswith("; ignoring it") for w in warnings), warnings
    assert (state / "state.json").read_bytes() == b'{"version": 1, "profiles": ['
    text = cli(["plan", "--profile", "4090d-qwen3-4b", "--simulate"], env)
    assert "state.json: corrupt (" in text.stdout


def test_cli_unusable_env_file_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "env.d"
    folder.mkdir()
    binary = tmp_path / "binary.env"
    binary.write_bytes(b"LLM_SUPERVISOR_API_PORT=\xff\xfe\n")
    cases = {str(folder): "not a regular file", str(binary): "not UTF-8 text",
             str(tmp_path / "missing.env"): "no such file"}
    for name, want in cases.items():
        env = clean_env(tmp_path, LLM_SUPERVISOR_ENV_FILE=name)
        (line,) = assert_bad_input(cli(["plan", "--profile", "4090d-qwen3-4b", "--simulate"], env), 1)
        assert line == f"error: settings: LLM_SUPERVISOR_ENV_FILE: {name}: {want}" or (
            line.startswith(f"error: settings: LLM_SUPERVISOR_ENV_FILE: {name}: {want}")), line
    good = tmp_path / "good.env"
    good.write_text("LLM_SUPERVISOR_API_PORT=abc\n")
    (line,) = assert_bad_input(cli(["plan", "--profile", "4090d-qwen3-4b"], clean_env(tmp_path, LLM_SUPERVISOR_ENV_FILE=str(good))), 1)
    assert line.startswith("error: settings: LLM_SUPERVISOR_API_PORT: ")


def test_a_key_with_a_carriage_return_is_named_on_one_line(tmp_path: Path) -> None:
    """Found by the mutation test above: an unknown key "\\r" was written raw into the error line."""
    path = tmp_path / "p.yaml"
    path.write_text('name: x\nhardware: {gpu_count: 1}\nmodel: {id: a, "\\r": 1, "a\\nb": 2}\n')
    with pytest.raises(ProfileError) as info:
        load_profile(str(path), PROFILES)
    lines = info.value.problems
    assert f"{path}: model.'\\r': unknown key (allowed: id, served_name, revision, trust_remote_code)" in lines
    assert all("\n" not in line and "\r" not in line for line in lines), lines
