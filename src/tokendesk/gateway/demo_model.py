"""The built-in demo model: answers locally so a fresh install can chat with no network."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from collections.abc import Iterator
from typing import Any

from tokendesk.gateway.tokens import _content_text, fit_text, text_tokens


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content")).strip()
    return ""


def compose_reply(messages: list[Any], max_tokens: int) -> str:
    said = _last_user_text(messages)
    words = len(said.split())
    preview = said if len(said) <= 80 else said[:77] + "..."
    reply = (
        "This is tokendesk's built-in demo model, so no real language model was asked. "
        f'You wrote {words} word{"s" if words != 1 else ""}: "{preview}". '
        "Every reply is metered like a real one: the prompt and this answer were counted "
        "and debited from your monthly token balance, which you can watch in the indicator."
    )
    # Like a real model, the demo stops at its completion budget.
    return fit_text(reply, max_tokens)


def usage_for(prompt: int, reply: str) -> dict[str, int]:
    completion = text_tokens(reply)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chunks(reply: str) -> Iterator[str]:
    """Split into word-sized pieces, as a streaming model would."""
    word = ""
    for char in reply:
        word += char
        if char == " ":
            yield word
            word = ""
    if word:
        yield word


# The demo's vectors are this long unless a call asks for ``dimensions``.
DEMO_DIMENSIONS = 8


def embedding(item: str | list[int], dimensions: int) -> list[float]:
    """A deterministic unit vector for one input: the same input, the same vector."""
    digest = hashlib.shake_256(json.dumps(item).encode()).digest(dimensions)
    raw = [byte / 127.5 - 1.0 for byte in digest]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return [round(value / norm, 6) for value in raw]


def encoded(vector: list[float]) -> str:
    """A vector as ``encoding_format: "base64"`` sends it: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def anthropic_usage(prompt: int, output: int) -> dict[str, int]:
    """Usage as Anthropic reports it: the demo serves nothing from a prompt cache."""
    return {
        "input_tokens": prompt,
        "output_tokens": output,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def anthropic_message(
    call_id: str, model: str, reply: str, stop_reason: str, usage: dict[str, int]
) -> dict[str, Any]:
    """A whole Messages API reply of one text block."""
    return {
        "id": call_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply}] if reply else [],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def anthropic_events(
    call_id: str, model: str, reply: str, stop_reason: str, usage: dict[str, int]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """A streamed Messages API reply as Anthropic sends it, event by event: the
    message's start (with the input usage), one text block's start, a ping, its
    deltas and its stop, the message's delta (stop reason and output usage), its stop."""
    start = anthropic_message(call_id, model, "", "", {**usage, "output_tokens": 1})
    yield "message_start", {"type": "message_start", "message": {**start, "stop_reason": None}}
    yield (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    yield "ping", {"type": "ping"}
    for piece in chunks(reply):
        delta = {"type": "text_delta", "text": piece}
        yield "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        },
    )
    yield "message_stop", {"type": "message_stop"}
