"""Conversations: a member's chat history. Only the owner ever sees a conversation."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.accounts import repository as accounts_repo
from tokendesk.accounts.actor import Actor
from tokendesk.chat import repository as repo
from tokendesk.chat.models import Conversation, Message, MessageRole
from tokendesk.db import utcnow
from tokendesk.errors import Conflict, InvalidInput, NotFound

DEFAULT_TITLE = "New chat"
TITLE_LENGTH = 60


@dataclass(frozen=True)
class ConversationWithMessages:
    conversation: Conversation
    messages: Sequence[Message]


def title_from(content: str) -> str:
    """A short title from the first message: its first line, whitespace collapsed."""
    line = next((part for part in content.strip().splitlines() if part.strip()), "")
    line = re.sub(r"\s+", " ", line).strip()
    if not line:
        return DEFAULT_TITLE
    if len(line) <= TITLE_LENGTH:
        return line
    return line[: TITLE_LENGTH - 1].rstrip() + "…"


async def list_conversations(
    session: AsyncSession, *, actor: Actor, limit: int = 50, offset: int = 0
) -> tuple[Sequence[Conversation], int]:
    items = await repo.list_for_user(session, user_id=actor.user_id, limit=limit, offset=offset)
    total = await repo.count_for_user(session, user_id=actor.user_id)
    return items, total


async def get_conversation(
    session: AsyncSession, *, actor: Actor, conversation_id: int
) -> Conversation:
    """The caller's own conversation; anyone else's answers 404, as if it did not exist."""
    conversation = await repo.get_owned(
        session, conversation_id=conversation_id, user_id=actor.user_id
    )
    if conversation is None:
        raise NotFound(f"conversation {conversation_id} not found")
    return conversation


async def get_with_messages(
    session: AsyncSession, *, actor: Actor, conversation_id: int
) -> ConversationWithMessages:
    conversation = await get_conversation(session, actor=actor, conversation_id=conversation_id)
    messages = await repo.list_messages(session, conversation_id=conversation.id)
    return ConversationWithMessages(conversation=conversation, messages=messages)


async def create_conversation(
    session: AsyncSession,
    *,
    actor: Actor,
    title: str | None = None,
    model: str | None = None,
    max_conversations: int | None = None,
) -> Conversation:
    """A new conversation; refused (409) when the caller already keeps
    ``max_conversations``."""
    if max_conversations is not None:
        # Counted under the user's row lock: two creates at once cannot both fit in one place.
        await accounts_repo.lock_user(session, user_id=actor.user_id)
        kept = await repo.count_for_user(session, user_id=actor.user_id)
        if kept >= max_conversations:
            raise Conflict(
                f"you keep {kept:,} conversations, the most allowed; delete one to start another"
            )
    now = utcnow()
    conversation = Conversation(
        user_id=actor.user_id,
        title=title or DEFAULT_TITLE,
        model=model,
        created_at=now,
        updated_at=now,
    )
    session.add(conversation)
    await session.flush()
    return conversation


async def update_conversation(
    session: AsyncSession,
    *,
    actor: Actor,
    conversation_id: int,
    title: str | None = None,
    model: str | None = None,
) -> Conversation:
    conversation = await get_conversation(session, actor=actor, conversation_id=conversation_id)
    values: dict[str, Any] = {}
    if title is not None:
        values["title"] = title
    if model is not None:
        values["model"] = model
    if values:
        await repo.update_conversation(session, conversation_id=conversation.id, values=values)
        await session.refresh(conversation)
    return conversation


async def delete_conversation(session: AsyncSession, *, actor: Actor, conversation_id: int) -> None:
    conversation = await get_conversation(session, actor=actor, conversation_id=conversation_id)
    await repo.delete_conversation(session, conversation_id=conversation.id)


async def add_message(
    session: AsyncSession,
    *,
    actor: Actor,
    conversation_id: int,
    role: MessageRole,
    content: str,
    tokens: int | None = None,
    max_chars: int | None = None,
) -> Message:
    """Append a message; the first user message also names an untitled conversation."""
    if max_chars is not None and len(content) > max_chars:
        raise InvalidInput(f"content: must be at most {max_chars:,} characters", field="content")
    conversation = await get_conversation(session, actor=actor, conversation_id=conversation_id)
    now = utcnow()
    values: dict[str, Any] = {"updated_at": now}
    if (
        role == MessageRole.USER
        and conversation.title == DEFAULT_TITLE
        and not await repo.has_messages(session, conversation_id=conversation.id)
    ):
        values["title"] = title_from(content)
    message = Message(
        conversation_id=conversation.id,
        role=role.value,
        content=content,
        tokens=tokens,
        created_at=now,
    )
    session.add(message)
    await repo.update_conversation(session, conversation_id=conversation.id, values=values)
    await session.flush()
    await session.refresh(conversation)
    return message
