"""The HTTP front: validate, enqueue, relay tokens back as SSE."""
