"""Daemon settings from the environment (LLM_SUPERVISOR_*) and an optional env file.

Built by the CLI and passed down; no module-level instance. Every value is checked here, once:
numbers finite and bounded, the API host an address, the engine command one a shell could split,
the API token a real one (at least MIN_TOKEN_CHARS printable characters, no spaces).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llm_supervisor.config.profile import ALL_INTERFACES, Profile, check_host, client_url
from llm_supervisor.errors import SettingsError

MIN_TOKEN_CHARS = 16  # `openssl rand -hex 16` gives 32
# The shipped profiles live in the package (so `pip install .`, the wheel and the Docker image
# have them); the checkout's top-level profiles/ is a link to this folder, one copy of each.
PACKAGE_PROFILES_DIR = Path(__file__).resolve().parent.parent / "data" / "profiles"


def _default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/llm-supervisor")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "llm-supervisor"


def _default_profiles_dir() -> Path:
    """The profiles shipped in the package (LLM_SUPERVISOR_PROFILES_DIR overrides)."""
    return PACKAGE_PROFILES_DIR


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLM_SUPERVISOR_",
        env_file=os.environ.get("LLM_SUPERVISOR_ENV_FILE") or None,
        env_ignore_empty=True,
        extra="ignore",
        allow_inf_nan=False,
    )

    profile: str | None = Field(default=None, description="profile name or YAML path")
    profiles_dir: Path = Field(default_factory=_default_profiles_dir)
    state_dir: Path = Field(default_factory=_default_state_dir)
    log_dir: Path | None = Field(default=None, description="default: <state_dir>/logs")
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8900, ge=0, le=65535)
    api_token: SecretStr | None = None
    # The engine's API key off every command line (`--set vllm.api_key=…` is visible in `ps`):
    # used when the profile sets no vllm.api_key. VLLM_API_KEY, which the engine would inherit
    # anyway, counts too, so the daemon's own readiness requests carry the key the engine wants.
    engine_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("LLM_SUPERVISOR_ENGINE_API_KEY", "VLLM_API_KEY", "engine_api_key"))
    engine_command: str = Field(default="vllm serve", description="command that starts the engine")
    role: Literal["head", "worker"] | None = Field(default=None, description="this host's role for a profile with a cluster section (default: the profile's cluster.role)")
    stop_timeout_s: float = Field(default=15.0, gt=0, le=3600, description="SIGTERM to SIGKILL deadline")
    failed_linger_s: float = Field(default=30.0, ge=0, le=86400, description="after giving up, stay in `failed` this "
                                   "long (status shows why; `supervisor restart` tries again), then exit 3")
    series_interval_s: float = Field(default=10.0, ge=0.2, le=3600, description="how often the status page's "
                                     "plots sample the engine; 360 points are kept (an hour at 10 s)")
    log_max_bytes: int = Field(default=20 * 1024 * 1024, ge=64 * 1024, le=1 << 40)
    log_backups: int = Field(default=5, ge=0, le=1000)

    @field_validator("engine_command")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if len(value) > 4096:
            raise ValueError(f"{len(value):,} characters (at most 4,096)")
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot be split into words like a shell would ({exc}); quote it as in a shell") from None
        if not words:
            raise ValueError("must name a command")
        return value

    @field_validator("api_host")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_host(value)

    @field_validator("api_token")
    @classmethod
    def _real_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value()
        if any(ch.isspace() or not ch.isprintable() for ch in token):
            raise ValueError("contains spaces or control characters (allowed: printable characters only, e.g. "
                             "the output of `openssl rand -hex 32`)")
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"{len(token)} characters is too short to guard the admin API (at least "
                             f"{MIN_TOKEN_CHARS}; e.g. `openssl rand -hex 32`)")
        return value

    @property
    def logs(self) -> Path:
        return self.log_dir or self.state_dir / "logs"

    @property
    def url(self) -> str:
        return client_url(self.api_host, self.api_port)


_LOCALHOST = {"localhost", "127.0.0.1"}


def _same_place(a: str, b: str) -> bool:
    """Could servers on these two hosts collide on one port?"""
    return a in ALL_INTERFACES or b in ALL_INTERFACES or a == b or {a, b} <= _LOCALHOST


def port_clash(settings: Settings, profile: Profile) -> list[str]:
    """The REST API and the address clients reach the engine on (the front door's, or vLLM's
    own) on one port: the second to bind would fail, and the message would blame someone else."""
    v = profile.vllm
    if settings.api_port == 0 or settings.api_port != v.port or not _same_place(settings.api_host, v.host):
        return []
    return [f"vllm.port={v.port}: the supervisor's REST API listens there too (LLM_SUPERVISOR_API_PORT="
            f"{settings.api_port} on {settings.api_host or 'all interfaces'}); choose another port for one of them"]


def _env_file_problem() -> str | None:
    """An env file that was named but cannot be used: better one clear line than settings
    silently missing (a typo in the path would otherwise mean running with the defaults)."""
    name = os.environ.get("LLM_SUPERVISOR_ENV_FILE")
    if not name:
        return None
    path = Path(name).expanduser()
    if not path.exists():
        return f"{name}: no such file"
    if not path.is_file():
        return f"{name}: not a regular file"
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"{name}: not UTF-8 text (byte {exc.start})"
    except OSError as exc:
        return f"{name}: cannot read ({exc.strerror})"
    return None


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning validation errors into one line per bad variable."""
    problem = _env_file_problem()
    if problem:
        raise SettingsError("unusable env file", [f"settings: LLM_SUPERVISOR_ENV_FILE: {problem}"])
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = "LLM_SUPERVISOR_" + "_".join(str(p) for p in err["loc"]).upper()
            problems.append(f"settings: {key}: {' '.join(err['msg'].removeprefix('Value error, ').split())}")
        raise SettingsError("invalid settings", problems) from None
