"""Messages -> prompt text, with the model's own chat template when the GGUF
carries one, else llama.cpp's named format (the bundled base model has none,
so it gets llama.cpp's `gemma` format)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from llama_cpp import llama_chat_format

from streamworker.engines.base import Message

Render = Callable[[Sequence[Message]], tuple[str, list[str]]]


def renderer(metadata: Mapping[str, str], eos: str, bos: str, chat_format: str = "") -> Render:
    """A function messages -> (prompt, extra stop strings)."""
    template = metadata.get("tokenizer.chat_template")
    if template and not chat_format:
        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=eos, bos_token=bos
        )

        def render_jinja(messages: Sequence[Message]) -> tuple[str, list[str]]:
            out = formatter(messages=[{"role": m.role, "content": m.content} for m in messages])
            stop = out.stop if isinstance(out.stop, list) else [out.stop] if out.stop else []
            return out.prompt, stop

        return render_jinja

    name = chat_format or "gemma"
    fn = getattr(llama_chat_format, f"format_{name.replace('-', '_')}", None)
    if fn is None:
        raise ValueError(f"unknown chat format {name!r}")

    def render_named(messages: Sequence[Message]) -> tuple[str, list[str]]:
        out = fn(messages=[{"role": m.role, "content": m.content} for m in messages])
        stop = out.stop if isinstance(out.stop, list) else [out.stop] if out.stop else []
        return out.prompt, stop

    return render_named
