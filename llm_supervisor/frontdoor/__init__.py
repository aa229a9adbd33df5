"""The front door: the supervisor owns the address clients use and vLLM listens privately behind it.

A streaming reverse proxy for the whole OpenAI-compatible API that holds requests while the engine
starts or restarts, re-sends the ones a dying engine never answered, drains before planned restarts,
and can bound how many requests reach the engine at once. See docs/frontdoor.md.

Modules: gate (engine state and admission, no I/O),
proxy (the ASGI app), upstream (the engine's address and pool), server (embedded uvicorn),
metrics (Prometheus collector), door (FrontDoor, what the daemon drives). Its settings are the
profile's `frontdoor:` section (config/frontdoor.py); time is llm_supervisor.clock.
"""

from llm_supervisor.config.frontdoor import FrontDoorConfig
from llm_supervisor.frontdoor.door import Drained, FrontDoor
from llm_supervisor.frontdoor.gate import EngineState
from llm_supervisor.frontdoor.metrics import FrontDoorCollector

__all__ = ["Drained", "EngineState", "FrontDoor", "FrontDoorCollector", "FrontDoorConfig"]
