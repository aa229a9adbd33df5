"""The front door: the supervisor owns the address clients use and vLLM listens privately behind it.

A streaming reverse proxy for the whole OpenAI-compatible API that holds requests while the engine
starts or restarts, re-sends the ones a dying engine never answered, drains before planned restarts,
and can bound how many requests reach the engine at once. See docs/frontdoor.md.

Modules: config (the profile's `frontdoor:` section), gate (engine state and admission, no I/O),
proxy (the ASGI app), upstream (the engine's address and pool), server (embedded uvicorn),
metrics (Prometheus collector), door (FrontDoor, what the daemon drives), clock (time seam).
"""

from llm_supervisor.frontdoor.config import FrontDoorConfig
from llm_supervisor.frontdoor.door import FrontDoor
from llm_supervisor.frontdoor.gate import EngineState
from llm_supervisor.frontdoor.metrics import FrontDoorCollector
from llm_supervisor.frontdoor.server import FrontDoorBindError

__all__ = ["EngineState", "FrontDoor", "FrontDoorBindError", "FrontDoorCollector", "FrontDoorConfig"]
