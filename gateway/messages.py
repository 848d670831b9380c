"""A chat request's messages -> the wire's `Message`s, or a 400 naming the
bad one.

Tool round trips are accepted as OpenAI sends them: an assistant message
with `tool_calls` (its `content` may be null) and `role: "tool"` answers
naming the call. The worker renders them with the model's template, or in
the generic format when the template has no place for them
(streamworker/tokenizer.py). A message's `name` travels with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.errors import BadRequest
from streamworker.protocol.wire import Message, ToolCall

if TYPE_CHECKING:
    from gateway.openai_types import ChatMessage, ToolCallIn
    from gateway.settings import GatewaySettings

# OpenAI's roles -> the roles of a chat template; `developer` is the newer
# name of `system`.
ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


def _refuse(param: str, message: str) -> BadRequest:
    return BadRequest(message, param=param, code="unsupported_parameter")


def _text_of(msg: ChatMessage, index: int) -> str:
    if isinstance(msg.content, str):
        return msg.content
    if msg.content is None:
        if msg.role == "assistant" and msg.tool_calls:
            return ""  # a turn that only called tools
        raise BadRequest("Message content is required.", param=f"messages[{index}].content")
    parts = []
    for j, part in enumerate(msg.content):
        param = f"messages[{index}].content[{j}]"
        if part.type != "text":
            raise _refuse(
                f"{param}.type", f"Content part type '{part.type}' is not supported; only 'text'."
            )
        if part.text is None:
            raise BadRequest("A text content part needs 'text'.", param=f"{param}.text")
        parts.append(part.text)
    return "".join(parts)


def _tool_calls(calls: list[ToolCallIn], index: int) -> list[ToolCall]:
    out = []
    for j, call in enumerate(calls):
        param = f"messages[{index}].tool_calls[{j}]"
        if call.type != "function":
            raise _refuse(f"{param}.type", f"Tool call type '{call.type}' is not supported.")
        out.append(ToolCall(call.id, call.function.name, call.function.arguments))
    return out


def _message(m: ChatMessage, i: int, settings: GatewaySettings) -> Message:
    role = ROLES.get(m.role)
    if role is None:
        raise BadRequest(
            f"Unknown role '{m.role}'; expected one of {', '.join(ROLES)}.",
            param=f"messages[{i}].role",
        )
    if m.tool_calls and role != "assistant":
        raise BadRequest(
            "Only assistant messages carry tool_calls.", param=f"messages[{i}].tool_calls"
        )
    if role == "tool" and not m.tool_call_id:
        raise BadRequest(
            "A tool message needs the tool_call_id it answers.",
            param=f"messages[{i}].tool_call_id",
        )
    if m.tool_call_id is not None and role != "tool":
        raise BadRequest(
            "Only tool messages carry a tool_call_id.", param=f"messages[{i}].tool_call_id"
        )
    text = _text_of(m, i)
    if len(text) > settings.max_message_chars:
        raise BadRequest(
            f"Message {i} is longer than {settings.max_message_chars} characters.",
            param=f"messages[{i}].content",
        )
    return Message(
        role,
        text,
        name=m.name or "",
        tool_calls=_tool_calls(m.tool_calls or [], i),
        tool_call_id=m.tool_call_id or "",
    )


def messages(raw: list[ChatMessage], settings: GatewaySettings) -> list[Message]:
    if not raw:
        raise BadRequest("messages must contain at least one message.", param="messages")
    if len(raw) > settings.max_messages:
        raise BadRequest(f"At most {settings.max_messages} messages are allowed.", param="messages")
    return [_message(m, i, settings) for i, m in enumerate(raw)]
