"""The built-in demo model: answers locally so a fresh install can chat with no network."""

from __future__ import annotations

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
