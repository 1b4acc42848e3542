"""Token estimates for holds and for output an upstream did not count."""

from __future__ import annotations

import math
from typing import Any

# Roughly four characters per token for English text with common tokenizers.
CHARS_PER_TOKEN = 4
PER_MESSAGE_OVERHEAD = 4


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multi-part content: count the text parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def prompt_tokens(messages: list[Any]) -> int:
    total = 3
    for message in messages:
        if isinstance(message, dict):
            total += PER_MESSAGE_OVERHEAD + text_tokens(_content_text(message.get("content")))
    return total


def weighted(tokens: int, weight: float) -> int:
    return tokens if weight == 1.0 else math.ceil(tokens * weight)
