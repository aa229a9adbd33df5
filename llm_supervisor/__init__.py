"""llm-supervisor: launch, pin, watch and recover vLLM's OpenAI server on bare GPU hosts."""

__version__ = "0.1.0"
