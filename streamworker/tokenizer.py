"""Messages -> prompt tokens: the model's chat template and its vocabulary.

One piece of code for everyone who counts prompt tokens: the engines build
the prompt they run with it, and the gateway's context check loads the same
model file's vocabulary alone (no weights) and counts with it, using the
chat format the worker announces in its heartbeat. So a prompt the gateway
admits has exactly the length the worker will see.

The template is the GGUF's own when it carries one, else llama.cpp's named
format (`CHAT_FORMAT`; the bundled base model has none and gets `gemma`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import llama_cpp
from llama_cpp import _internals, llama_chat_format

from streamworker.protocol.wire import Message

Render = Callable[[Sequence[Message]], tuple[str, list[str]]]
DEFAULT_CHAT_FORMAT = "gemma"


@llama_cpp.llama_log_callback
def _quiet_log(level: int, text: bytes, user_data: object) -> None:
    """llama.cpp's own logging is noise at INFO (and a Python callback avoids
    a crash seen with the default one on some CUDA builds)."""


def quiet_llama_logs() -> None:
    llama_cpp.llama_log_set(_quiet_log, None)


def renderer(metadata: Mapping[str, str], eos: str, bos: str, chat_format: str = "") -> Render:
    """A function messages -> (prompt, extra stop strings)."""
    template = metadata.get("tokenizer.chat_template")
    if template and not chat_format:
        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=eos, bos_token=bos
        )

        def render_jinja(messages: Sequence[Message]) -> tuple[str, list[str]]:
            out = formatter(messages=[{"role": m.role, "content": m.content} for m in messages])
            return out.prompt, _stops(out.stop)

        return render_jinja

    name = chat_format or DEFAULT_CHAT_FORMAT
    fn = getattr(llama_chat_format, f"format_{name.replace('-', '_')}", None)
    if fn is None:
        raise ValueError(f"unknown chat format {name!r}")

    def render_named(messages: Sequence[Message]) -> tuple[str, list[str]]:
        out = fn(messages=[{"role": m.role, "content": m.content} for m in messages])
        return out.prompt, _stops(out.stop)

    return render_named


def _stops(stop: str | list[str] | None) -> list[str]:
    return stop if isinstance(stop, list) else [stop] if stop else []


class PromptBuilder:
    """A loaded model's (or vocabulary's) messages -> tokens."""

    def __init__(self, model: _internals.LlamaModel, chat_format: str = "") -> None:
        self._model = model
        eos = self._special(model.token_eos())
        bos = self._special(model.token_bos())
        self.render = renderer(model.metadata(), eos, bos, chat_format)

    def _special(self, token: int) -> str:
        return self._model.detokenize([token], special=True).decode("utf-8", errors="ignore")

    def tokens(self, messages: Sequence[Message]) -> tuple[list[int], list[str]]:
        """The prompt's tokens (BOS first) and the template's stop strings."""
        prompt, stops = self.render(messages)
        text = prompt.encode("utf-8", "surrogatepass")
        return self._model.tokenize(text, add_bos=True, special=True), stops

    def count(self, messages: Sequence[Message]) -> int:
        return len(self.tokens(messages)[0])


def load_vocabulary(path: str, chat_format: str = "") -> PromptBuilder:
    """A model file's vocabulary and template only (no weights: about half a
    second), for counting prompt tokens where the model does not run."""
    quiet_llama_logs()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = _internals.LlamaModel(path_model=path, params=params, verbose=False)
    return PromptBuilder(model, chat_format)
