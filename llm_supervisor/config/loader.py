"""Profiles from YAML files: finding them by name or path, `--set` overrides, validation into the
schema (config/profile.py), and errors as one line per problem naming the file or the `--set`
and the key; the effective profile back as YAML with secrets masked.

Reading is bounded, so no file can cost minutes or gigabytes to refuse: at most
MAX_PROFILE_BYTES, nesting at most MAX_DEPTH levels, MAX_NODES values (aliases counted as what
they stand for), integers of at most MAX_INT_DIGITS digits; a key given twice in one mapping is
refused (YAML would silently keep the last one, dropping what the first set).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llm_supervisor.config.profile import Profile
from llm_supervisor.config.redaction import Redactor, is_secret_name
from llm_supervisor.errors import ProfileError

SHOWN_INPUT_CHARS = 80
MAX_PROFILE_BYTES = 256 * 1024  # the shipped profiles are about 1 KB
MAX_DEPTH = 20
MAX_NODES = 20_000
MAX_INT_DIGITS = 18


class TooManyDigits:
    """An integer too long to be meant: every field refuses it, and the error line says what it was."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"a number of {self.digits:,} digits (at most {MAX_INT_DIGITS})"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the bounds above and duplicate keys refused. Each problem is a
    MarkedYAMLError, so it is reported with its line and column like any YAML error."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._sizes: dict[int, int] = {}

    def _refuse(self, problem: str, mark: Any) -> None:
        raise yaml.constructor.ConstructorError(None, None, problem, mark)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            self._nodes += self._sizes.get(id(node), 1)
            if self._nodes > MAX_NODES:
                self._refuse(f"more than {MAX_NODES:,} values (aliases count as what they stand for)", event.start_mark)
            return node
        self._depth += 1
        start = self._nodes
        try:
            if self._depth > MAX_DEPTH:
                self._refuse(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            self._nodes += 1
            if self._nodes > MAX_NODES:
                self._refuse(f"more than {MAX_NODES:,} values", self.peek_event().start_mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = self._nodes - start
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    if key_node.value in seen and key_node.tag != "tag:yaml.org,2002:merge":
                        first = seen[key_node.value]
                        self._refuse(f"key {key_node.value!r} appears twice in one mapping (first at line "
                                     f"{first.line + 1}); YAML would keep only the last", key_node.start_mark)
                    seen[key_node.value] = key_node.start_mark
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: Any) -> Any:
        digits = sum(ch.isdigit() for ch in str(node.value))
        if digits > MAX_INT_DIGITS:
            # Not converted (Python refuses past 4,300 digits, slowly before): a value no field
            # accepts, so validation names the key it was given for.
            return TooManyDigits(digits)
        return super().construct_yaml_int(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def load_yaml(text: str) -> Any:
    """YAML text within the bounds above (raises yaml.YAMLError)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise yaml.YAMLError("nested too deep") from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["not valid YAML"])[0]
    return f"{where}: {problem}"


def _shown(value: Any) -> str:
    """The offending value for an error line: repr (one line), cut short."""
    text = repr(value)
    return text if len(text) <= SHOWN_INPUT_CHARS else text[:SHOWN_INPUT_CHARS] + "…"


def _is_secret_loc(loc: str) -> bool:
    return "api_key" in loc or (loc.startswith("env.") and _is_secret_name(loc[4:]))


def _is_secret_name(name: str) -> bool:
    return is_secret_name(name)


def _render_errors(source: str, exc: ValidationError, origins: dict[str, str] | None = None) -> list[str]:
    """One line per problem: "FILE: key: what is wrong", or "--set KEY: what is wrong" when the
    offending value came from an override (the longest that covers the key). `origins` maps each
    overridden dotted key to the flag that set it ("--set vllm.port", "--model")."""
    origins = origins or {}
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        shown_loc = ".".join(_plain(str(p)) for p in err["loc"]) or "(top level)"  # a key may hold \r or \n
        msg = " ".join(err["msg"].removeprefix("Value error, ").split())
        if err["type"] == "extra_forbidden":
            parent = _model_at(err["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent else ""
            msg = f"unknown key (allowed: {allowed})" if allowed else "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "literal_error":
            msg = msg.replace("Input should be", "must be")
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            shown = "***" if _is_secret_loc(loc) else _shown(err["input"])
            msg = f"{msg} (got {shown})"  # as given: its spaces may be the problem
        covering = [k for k in origins if loc == k or loc.startswith(k + ".")]
        # A check across keys (a section's, or the whole profile's) that an override took part in:
        # the override is named first, with the file it was applied to.
        within = [k for k in origins if k.startswith(loc + ".")] if loc != "(top level)" else \
            [k for k in origins if k in msg]
        if covering:
            key = max(covering, key=len)
            lines.append(f"{origins[key]}: {msg}" if loc == key else f"{origins[key]}: {shown_loc}: {msg}")
        elif within:
            lines.append(f"{', '.join(origins[k] for k in within)} (with {source}): {shown_loc}: {msg}")
        else:
            lines.append(f"{source}: {shown_loc}: {msg}")
    return lines


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Profile
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return None
        model = nxt
    return model


def resolve_profile_path(name_or_path: str, profiles_dir: Path, label: str = "--profile") -> Path:
    """A shipped name (`4090d-qwen3-4b`) or a path to a YAML file; `label` is what the user typed
    it as, for the message when there is no such profile."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if candidate.is_dir():
            raise ProfileError("profile is a directory", [f"{name_or_path}: is a directory, not a profile file"])
        if candidate.exists() and not candidate.is_file():
            # a FIFO or a device would block or never end; only regular files are profiles
            raise ProfileError("profile is not a file", [f"{name_or_path}: not a regular file"])
        if not candidate.is_file():
            raise ProfileError("profile not found", [f"{name_or_path}: no such profile file"])
        return candidate
    for suffix in (".yaml", ".yml"):
        path = profiles_dir / f"{name_or_path}{suffix}"
        if path.is_file():
            return path
    known = ", ".join(list_profile_names(profiles_dir)) or "none"
    raise ProfileError("profile not found", [f"{label}: no profile named {name_or_path!r} in {profiles_dir} (known: {known})"])


def list_profile_names(profiles_dir: Path) -> list[str]:
    if not profiles_dir.is_dir():
        return []
    return sorted(p.stem for p in profiles_dir.iterdir() if p.suffix in (".yaml", ".yml"))


def read_profile_data(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_PROFILE_BYTES + 1)
        if len(raw) > MAX_PROFILE_BYTES:
            raise ProfileError("profile too large", [f"{path}: larger than {MAX_PROFILE_BYTES // 1024} KiB; a profile "
                                                     "is a few hundred lines at most"])
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError("unreadable profile", [f"{path}: cannot read ({exc.__class__.__name__}: {exc})"]) from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ProfileError("invalid YAML", [f"{path}: not valid YAML{_yaml_problem(exc)}"]) from None
    if not isinstance(data, dict):
        raise ProfileError("invalid profile", [f"{path}: (top level): must be a mapping of keys, got {type(data).__name__}"])
    return data


def _plain(text: str) -> str:
    """User text for an error line: as typed when plain, else quoted (one line, cut short)."""
    if text and text.isprintable() and text == text.strip() and len(text) <= SHOWN_INPUT_CHARS:
        return text
    return _shown(text)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`vllm.max_model_len=10000` → (["vllm", "max_model_len"], 10000). Values are YAML scalars."""
    if "=" not in text:
        raise ProfileError("bad --set", [f"--set {_plain(text)}: expected KEY=VALUE with a dotted key (e.g. vllm.port=8001)"])
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ProfileError("bad --set", [f"--set {_plain(key)}: not a dotted key (e.g. vllm.max_model_len)"])
    if len(raw) > MAX_PROFILE_BYTES:
        raise ProfileError("bad --set", [f"--set {'.'.join(parts)}: a value of {len(raw):,} characters is too long"])
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.constructor.ConstructorError as exc:  # within YAML's syntax, beyond our bounds
        problem = getattr(exc, "problem", None) or "not a usable value"
        raise ProfileError("bad --set", [f"--set {'.'.join(parts)}: {problem}"]) from None
    except yaml.YAMLError:
        value = raw
    if parts[-1] == "api_key" or parts[-1] == "extra_args" and isinstance(value, str):
        value = raw if parts[-1] == "api_key" else value.split()
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ProfileError("bad --set", [f"--set {'.'.join(parts)}: {part} is not a section"])
            node = child
        node[parts[-1]] = value
    return data


def load_profile(
    name_or_path: str,
    profiles_dir: Path,
    overrides: list[str] | None = None,
    model: str | None = None,
    label: str = "--profile",
) -> Profile:
    """Load, override (`--set`, `--model`) and validate a profile; ProfileError lists every problem."""
    path = resolve_profile_path(name_or_path, profiles_dir, label)
    data = read_profile_data(path)
    overrides = list(overrides or [])
    apply_overrides(data, overrides)
    origins = {key: f"--set {key}" for key in (".".join(parse_override(text)[0]) for text in overrides)}
    if model is not None:  # `--model ""` is a mistake to report, not a flag to ignore
        section = data.setdefault("model", {})
        if isinstance(section, dict):
            section["id"] = model
            origins["model.id"] = "--model"
    return validate_profile(data, str(path), origins)


def validate_profile(data: dict[str, Any], source: str, origins: dict[str, str] | None = None) -> Profile:
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"invalid profile {source}", _render_errors(source, exc, origins)) from None


def profile_to_yaml(profile: Profile) -> str:
    """The effective profile as YAML, with secrets masked."""
    data = profile.model_dump(mode="json", exclude_none=True)
    if profile.vllm.api_key is not None:
        data["vllm"]["api_key"] = "***"
    redactor = Redactor.from_inputs(None, profile)  # by name, by shape and by value (config/redaction.py)
    data["env"] = redactor.env(data.get("env", {}))
    data["vllm"]["extra_args"] = redactor.argv(data["vllm"].get("extra_args", []))
    return yaml.safe_dump(redactor.value(data), sort_keys=False)
