"""The one redaction of everything the supervisor writes: logs, the engine's log file, the state
file, `/status` (and the page and metrics built from it), `plan`, sd_notify STATUS lines.

Names alone are not enough: vLLM's own argparse error echoes a secret passed in `extra_args`,
and a variable called `DB_PASS` says nothing to a list of words. So a `Redactor` knows the secret
*values* it was given and replaces them wherever they appear; names (`--api-key`, `HF_TOKEN`)
only decide which values are secrets. It is built once by the composition root from the settings
and the profile (`Redactor.from_inputs`) and passed to whatever writes.

Which values are secrets:
* the profile's `vllm.api_key`, the settings' API token and engine API key;
* `env` values whose name looks secret (KEY, TOKEN, SECRET, PASSWORD and CREDENTIAL anywhere in
  the name; PASS, PASSWD, PWD, PRIVATE as a part of it: `DB_PASS`, `MY_PASSWD`, but not
  `BYPASS_CACHE` or the shell's `PWD`) or whose value looks like a known kind of token (`hf_…`,
  `sk-…`, `ghp_…`, `xox…-`, `AKIA…`, a JWT), in the profile and in the daemon's environment
  (which the engine inherits);
* in `extra_args`, the value after (or `=` in) a flag whose name looks secret.

Values shorter than MIN_SECRET_CHARS are masked by name where they stand (`env`, argv) but not
searched for in free text: a 2-character "secret" would mask half of every log line. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

REDACTED = "***"
MIN_SECRET_CHARS = 8
SECRET_NAME_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASS", "PWD", "CREDENTIAL", "PRIVATE")
NOT_SECRET_NAMES = ("PWD", "OLDPWD")  # the shell's working directories
# vLLM's (and huggingface-cli's) flags that take a secret; any other flag whose name looks secret too.
SECRET_FLAGS = ("--api-key", "--hf-token", "--token")
_TOKEN_SHAPES = re.compile(
    r"^(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|AKIA[0-9A-Z]{16}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})$")
# Name words matched as whole parts of a name (`DB_PASS`, `MY_PASSWD`, `api-key`), so that
# `BYPASS_CACHE` or `COMPASS` are not taken for secrets; KEY, TOKEN, SECRET match anywhere.
_ANYWHERE = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")


def is_secret_name(name: str) -> bool:
    """Does a variable, key or flag name say its value is a secret?"""
    upper = name.upper().lstrip("-")
    if upper in NOT_SECRET_NAMES:
        return False
    if any(word in upper for word in _ANYWHERE):
        return True
    parts = re.split(r"[^A-Z0-9]+", upper)
    return any(part in SECRET_NAME_WORDS for part in parts)


def looks_like_token(value: str) -> bool:
    """A value shaped like a well-known kind of token (Hugging Face, OpenAI, GitHub, Slack, AWS, JWT)."""
    return bool(_TOKEN_SHAPES.match(value.strip()))


def is_secret_flag(flag: str) -> bool:
    return flag in SECRET_FLAGS or (flag.startswith("--") and is_secret_name(flag[2:]))


def _argv_secret_spans(argv: Iterable[str]) -> Iterator[tuple[str, str | None]]:
    """Each argument with the secret it carries: the value after (`--api-key X`: the `X`) or `=` in
    (`--db-password=X`) a secret-looking flag, else None."""
    value_next = False
    for arg in argv:
        if value_next:
            value_next = False
            yield arg, arg
            continue
        flag, eq, value = arg.partition("=")
        secret_flag = is_secret_flag(flag)
        value_next = secret_flag and not eq
        yield arg, (value if secret_flag and eq else None)


def argv_secrets(argv: Iterable[str]) -> list[str]:
    """The values after (or `=` in) secret-looking flags of an argument list."""
    return [secret for _, secret in _argv_secret_spans(argv) if secret]


def is_secret_entry(name: str, value: str) -> bool:
    """An environment entry whose name or value says it is a secret."""
    return bool(value) and (is_secret_name(name) or looks_like_token(value))


def env_secrets(env: Mapping[str, str]) -> list[str]:
    return [v for k, v in env.items() if is_secret_entry(k, v)]


class Redactor:
    """Masks known secret values in text, bytes and JSON-like data, and secrets by name in argv
    and environments. An empty Redactor still masks by name."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        values: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            # A secret spanning lines would never be found whole in line-by-line output.
            for part in str(secret).splitlines():
                part = part.strip()
                if len(part) >= MIN_SECRET_CHARS:
                    values.add(part)
        self._values = sorted(values, key=len, reverse=True)  # longest first: a secret inside another
        self._bytes = [v.encode("utf-8", "surrogateescape") for v in self._values]
        self.longest = max((len(b) for b in self._bytes), default=0)

    def __bool__(self) -> bool:
        return bool(self._values)

    def __repr__(self) -> str:  # never the values
        return f"Redactor({len(self._values)} secrets)"

    def with_secrets(self, secrets: Iterable[str | None]) -> "Redactor":
        return Redactor([*self._values, *secrets])

    @classmethod
    def from_inputs(cls, settings: Any = None, profile: Any = None, env: Mapping[str, str] | None = None) -> "Redactor":
        """Every secret the supervisor was given: the settings' token and engine key, the profile's
        API key, its secret-looking `env` values and `extra_args` values, and secret-looking
        variables of `env` (the daemon's own environment, inherited by the engine)."""
        secrets: list[str | None] = []
        for name in ("api_token", "engine_api_key"):
            value = getattr(settings, name, None) if settings is not None else None
            secrets.append(value.get_secret_value() if hasattr(value, "get_secret_value") else value)
        if profile is not None:
            key = profile.vllm.api_key
            secrets.append(key.get_secret_value() if key is not None else None)
            secrets += env_secrets(profile.env)
            secrets += argv_secrets(profile.vllm.extra_args)
        if env is not None:
            secrets += env_secrets(env)
        return cls(secrets)

    # ------------------------------------------------------------ by value
    def text(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        return text

    def bytes(self, data: bytes) -> bytes:
        for value in self._bytes:
            if value in data:
                data = data.replace(value, REDACTED.encode())
        return data

    def value(self, obj: Any) -> Any:
        """A copy of JSON-like data (dicts, lists, tuples, strings) with every secret masked;
        other values as they are. Returns `obj` itself when there is nothing to mask."""
        if not self._values:
            return obj
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {self.text(k) if isinstance(k, str) else k: self.value(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.value(v) for v in obj]
        return obj

    # ------------------------------------------------------------ by name
    def argv(self, argv: Iterable[str]) -> list[str]:
        """Mask the value of any secret-looking flag (`--api-key X`, `--db-password=X`), then values."""
        out: list[str] = []
        for arg, secret in _argv_secret_spans(argv):
            # the secret is the whole argument (after `--api-key`) or what follows `=` in it
            out.append(self.text(arg) if secret is None else arg[: len(arg) - len(secret)] + REDACTED)
        return out

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        return {k: (REDACTED if is_secret_entry(k, v) else self.text(v))
                for k, v in env.items()}
