"""The profile's `frontdoor:` section. Pure: pydantic only.

Every setting has a default that suits a team sharing one engine; docs/frontdoor.md says what
each one changes for clients.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

MIB = 1024 * 1024

# Answered at once (503) while the engine is not ready, never held: probes want a quick answer,
# and a held probe only ties up a slot until the prober gives up.
PROBE_PATHS = ("/health", "/ping", "/load", "/metrics")


class FrontDoorConfig(BaseModel):
    """How the front door holds, queues, retries and drains requests to the engine."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(
        default=True,
        description="serve clients through the front door (the engine listens privately behind it); "
                    "false: vLLM listens on vllm.host/vllm.port itself, as before",
    )
    hold_timeout_s: float | None = Field(
        default=None, gt=0,
        description="longest a request waits for the engine to become ready; None: until the daemon's "
                    "estimate of the time to ready (x1.25 + 10 s, at least 10 s per request)",
    )
    hold_max_s: float = Field(
        default=600.0, gt=0,
        description="a request never waits for the engine longer than this (also the wait when the "
                    "daemon has no estimate)",
    )
    max_held: int = Field(
        default=1024, ge=0,
        description="requests waiting for the engine to become ready at once; past it, 503 (0: never hold)",
    )
    max_in_flight: int | None = Field(
        default=None, ge=1,
        description="requests sent to the engine at once; None: no admission control (pass-through)",
    )
    max_queued: int = Field(
        default=256, ge=0,
        description="with max_in_flight: requests waiting for a slot; past it, 429",
    )
    drain_grace_s: float = Field(
        default=30.0, ge=0,
        description="before a planned restart, how long requests already at the engine may finish",
    )
    retry_body_limit_bytes: int = Field(
        default=1 * MIB, ge=0,
        description="request bodies up to this size are kept so the request can be re-sent to a "
                    "relaunched engine; larger ones stream through and are never re-sent",
    )
    max_retries: int = Field(
        default=1, ge=0,
        description="how many times one request may be re-sent after an engine failed it before "
                    "answering (cuts by a planned restart do not count)",
    )
    connect_timeout_s: float = Field(
        default=5.0, gt=0,
        description="connecting to the engine; there is no read timeout (a long generation is legitimate)",
    )
    client_keepalive_s: float = Field(
        default=5.0, gt=0,
        description="an idle client connection is closed after this (vLLM's own uvicorn uses 5 s)",
    )
    probe_paths: tuple[str, ...] = Field(
        default=PROBE_PATHS,
        description="paths answered 503 at once while the engine is not ready, instead of held",
    )

    @model_validator(mode="after")
    def _hold_within_max(self) -> FrontDoorConfig:
        if self.hold_timeout_s is not None and self.hold_timeout_s > self.hold_max_s:
            raise ValueError(f"hold_timeout_s ({self.hold_timeout_s:g}) must not exceed hold_max_s "
                             f"({self.hold_max_s:g})")
        return self
