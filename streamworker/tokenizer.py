"""Messages -> prompt tokens: the model's chat template and its vocabulary.

One piece of code for everyone who counts prompt tokens: the engines build
the prompt they run with it, and the gateway's context check loads the same
model file's vocabulary alone (no weights) and counts with it, using the
chat format the worker announces in its heartbeat. So a prompt the gateway
admits has exactly the length the worker will see.

The template is the GGUF's own when it carries one, else llama.cpp's named
format (`CHAT_FORMAT`; the bundled base model has none and gets `gemma`).

Tool round trips (an assistant's `tool_calls`, `tool` answers) go to a
template that knows them as structured fields; any other template gets them
as plain text in the generic format (`generic_messages`, docs/api.md), the
same JSON the gateway asks a model without tool support to answer in.
A message's `name` is written before its content, so one participant's
words never pass as another's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import llama_cpp
from llama_cpp import _internals, llama_chat_format

from streamworker.protocol.wire import Message

Render = Callable[[Sequence[Message]], tuple[str, list[str]]]
DEFAULT_CHAT_FORMAT = "gemma"
# Named formats that drop system messages: their system text is put at the
# start of the first user turn instead, as Gemma's own template does.
NO_SYSTEM_ROLE = frozenset({"gemma"})
# The generic tool-call format: the key of the JSON object that lists calls.
TOOL_CALLS_KEY = "tool_calls"


@llama_cpp.llama_log_callback
def _quiet_log(level: int, text: bytes, user_data: object) -> None:
    """llama.cpp's own logging is noise at INFO (and a Python callback avoids
    a crash seen with the default one on some CUDA builds)."""


def quiet_llama_logs() -> None:
    llama_cpp.llama_log_set(_quiet_log, None)


def _arguments(text: str) -> object:
    """A call's arguments as JSON when they parse (they should), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def generic_messages(messages: Sequence[Message]) -> list[Message]:
    """Tool round trips as plain text, for templates that know only roles
    and content: an assistant's calls become the generic JSON it would have
    written, a tool's answer a user turn that says which call it answers."""
    out = []
    for m in messages:
        content = f"{m.name}: {m.content}" if m.name and m.role != "tool" else m.content
        if m.role == "tool":
            who = f"{m.name} " if m.name else ""
            content = f"Result of tool call {who}({m.tool_call_id}):\n{m.content}"
            out.append(Message("user", content))
            continue
        if m.tool_calls:
            calls = [{"name": c.name, "arguments": _arguments(c.arguments)} for c in m.tool_calls]
            call_text = json.dumps({TOOL_CALLS_KEY: calls}, ensure_ascii=False)
            content = f"{content}\n{call_text}" if content else call_text
        out.append(Message(m.role, content))
    return out


def _fold_system(messages: Sequence[Message]) -> list[Message]:
    """System text at the start of the first user turn, for formats without a
    system role (they would drop it)."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    rest = [m for m in messages if m.role != "system"]
    if not system:
        return rest
    for i, m in enumerate(rest):
        if m.role == "user":
            rest[i] = Message("user", f"{system}\n\n{m.content}")
            return rest
    return [Message("user", system), *rest]


def _structured(m: Message) -> dict[str, Any]:
    """A message as a tool-aware template reads it (OpenAI's shape)."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


def _plain(messages: Sequence[Message]) -> list[dict[str, Any]]:
    return [{"role": m.role, "content": m.content} for m in generic_messages(messages)]


def renderer(metadata: Mapping[str, str], eos: str, bos: str, chat_format: str = "") -> Render:
    """A function messages -> (prompt, extra stop strings)."""
    template = metadata.get("tokenizer.chat_template")
    if template and not chat_format:
        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=eos, bos_token=bos
        )
        # A template that reads tool_calls renders tool round trips itself.
        knows_tools = "tool_calls" in template

        def render_jinja(messages: Sequence[Message]) -> tuple[str, list[str]]:
            shaped = [_structured(m) for m in messages] if knows_tools else _plain(messages)
            out = formatter(messages=shaped)
            return out.prompt, _stops(out.stop)

        return render_jinja

    name = chat_format or DEFAULT_CHAT_FORMAT
    fn = getattr(llama_chat_format, f"format_{name.replace('-', '_')}", None)
    if fn is None:
        raise ValueError(f"unknown chat format {name!r}")
    fold = name in NO_SYSTEM_ROLE

    def render_named(messages: Sequence[Message]) -> tuple[str, list[str]]:
        plain = generic_messages(messages)
        out = fn(messages=_plain(_fold_system(plain) if fold else plain))
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

    def raw_tokens(self, prompt: str | Sequence[int]) -> list[int]:
        """A raw completion prompt's tokens (no template): text gets BOS and
        its special tokens parsed, as llama-server does; token ids are taken
        as they are."""
        if not isinstance(prompt, str):
            return list(prompt)
        return self.tokenize(prompt, add_special=True)

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8", "surrogatepass")
        return self._model.tokenize(data, add_bos=add_special, special=parse_special)

    def piece(self, token: int) -> bytes:
        """One token's bytes (a piece may be part of a UTF-8 character).
        Read through detokenize: llama-cpp-python's `token_to_piece` returns
        its whole buffer, padding included."""
        return self._model.detokenize([token], special=True)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._model.detokenize(list(tokens), special=True).decode("utf-8", errors="replace")

    @property
    def n_vocab(self) -> int:
        return self._model.n_vocab()


def load_vocabulary(path: str, chat_format: str = "") -> PromptBuilder:
    """A model file's vocabulary and template only (no weights: about half a
    second), for counting prompt tokens where the model does not run."""
    quiet_llama_logs()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = _internals.LlamaModel(path_model=path, params=params, verbose=False)
    return PromptBuilder(model, chat_format)
