"""Token estimates for holds and for output an upstream did not count.

The estimates err high: a hold that is too small lets a call cost more than was
held, while one that is too large only returns the difference at settlement.
"""

from __future__ import annotations

import json
import math
from typing import Any

# Roughly four characters per token for English text with common tokenizers.
CHARS_PER_TOKEN = 4
PER_MESSAGE_OVERHEAD = 4
# Every reply is primed with a few tokens of its own.
REPLY_PRIMING = 3
# Images are billed by their size, which only the upstream sees: a low-detail image
# costs 85 tokens; any other is counted as a 1024x1024 high-detail image (85 plus
# four 512-pixel tiles of 170), the size common clients scale images down to.
IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS = 765
# Anthropic scales an image down to about 1.15 megapixels, at most about 1,600 tokens.
ANTHROPIC_IMAGE_TOKENS = 1600
# Request fields the upstream bills besides the messages: what it reads as part of the
# prompt, and a predicted output, whose rejected tokens are billed as completion on top
# of the budget.
PROMPT_FIELDS = (
    "tools",
    "functions",
    "response_format",
    "tool_choice",
    "function_call",
    "prediction",
)


TEXT_PARTS = ("text", "input_text", "output_text")


def text_tokens(text: str) -> int:
    """Four ASCII characters to a token, and every other character a token of its own
    (scripts such as Chinese or emoji take a token or more per character)."""
    if not text:
        return 0
    if text.isascii():
        return math.ceil(len(text) / CHARS_PER_TOKEN)
    wide = len(text) - len(text.encode("ascii", "ignore"))
    return math.ceil((len(text) - wide) / CHARS_PER_TOKEN) + wide


def fit_text(text: str, tokens: int) -> str:
    """The longest start of ``text`` that :func:`text_tokens` counts as at most ``tokens``."""
    narrow = wide = 0
    for index, char in enumerate(text):
        if char.isascii():
            narrow += 1
        else:
            wide += 1
        if math.ceil(narrow / CHARS_PER_TOKEN) + wide > tokens:
            return text[:index]
    return text


def _json_tokens(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return text_tokens(value)
    return text_tokens(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _content_text(content: Any) -> str:
    """The text of a message's content (a string, or the text of its parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _part_tokens(part: Any) -> int:
    if not isinstance(part, dict):
        return _json_tokens(part)
    kind = part.get("type")
    # Chat's text parts, and the Responses API's input and output text.
    if kind in TEXT_PARTS or (kind is None and "text" in part):
        return _json_tokens(part.get("text"))
    if kind == "image_url":
        image = part.get("image_url")
        detail = image.get("detail") if isinstance(image, dict) else None
        return IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS
    if kind == "input_image":
        return IMAGE_TOKENS_LOW if part.get("detail") == "low" else IMAGE_TOKENS
    if kind == "image":
        # Anthropic's image block: its base64 data would count as text many times over.
        return ANTHROPIC_IMAGE_TOKENS
    if kind == "tool_result":
        # Anthropic's tool result: its content is parts (text, images) of its own.
        return _json_tokens(part.get("tool_use_id")) + content_tokens(part.get("content"))
    # Audio, files and anything newer: counted by their full text, which errs high.
    return _json_tokens(part)


def content_tokens(content: Any) -> int:
    if isinstance(content, list):
        return sum(_part_tokens(part) for part in content)
    return _json_tokens(content)


def _message_tokens(message: Any) -> int:
    if not isinstance(message, dict):
        return PER_MESSAGE_OVERHEAD + _json_tokens(message)
    total = PER_MESSAGE_OVERHEAD + content_tokens(message.get("content"))
    for field in ("name", "tool_calls", "function_call", "tool_call_id", "refusal"):
        total += _json_tokens(message.get(field))
    return total


def prompt_tokens(
    messages: list[Any],
    request: dict[str, Any] | None = None,
    fields: tuple[str, ...] = PROMPT_FIELDS,
) -> int:
    """Everything the upstream bills as input: each message's text, content parts,
    tool calls and tool results, and the ``fields`` of ``request`` it reads as prompt
    (tool and function definitions, say)."""
    total = REPLY_PRIMING + sum(_message_tokens(message) for message in messages)
    if request is not None:
        total += sum(_json_tokens(request.get(field)) for field in fields)
    return total


# The fields of an Anthropic Messages request the upstream bills as input, besides
# its messages and its system prompt.
ANTHROPIC_PROMPT_FIELDS = ("tools", "tool_choice", "mcp_servers")


def anthropic_prompt_tokens(request: dict[str, Any]) -> int:
    """Everything an Anthropic Messages call bills as input: its messages, its system
    prompt (text or parts) and its tool definitions."""
    messages = request.get("messages")
    total = prompt_tokens(messages if isinstance(messages, list) else [])
    total += content_tokens(request.get("system"))
    return total + sum(_json_tokens(request.get(field)) for field in ANTHROPIC_PROMPT_FIELDS)
