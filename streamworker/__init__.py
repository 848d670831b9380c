"""streamworker: an OpenAI-compatible LLM job queue on Redis Streams."""

__version__ = "0.1.0"
