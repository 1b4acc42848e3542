"""All SQL for conversations and messages. Every read is scoped to the owner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.chat.models import Conversation, Message


async def count_for_user(session: AsyncSession, *, user_id: int) -> int:
    total = await session.scalar(
        select(func.count()).select_from(Conversation).where(Conversation.user_id == user_id)
    )
    return int(total or 0)


async def list_for_user(
    session: AsyncSession, *, user_id: int, limit: int, offset: int
) -> Sequence[Conversation]:
    rows = await session.scalars(
        select(Conversation)
        .where(Conversation.user_id == user_id)
        .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return rows.all()


async def get_owned(
    session: AsyncSession, *, conversation_id: int, user_id: int
) -> Conversation | None:
    return await session.scalar(
        select(Conversation).where(
            Conversation.id == conversation_id, Conversation.user_id == user_id
        )
    )


async def list_messages(session: AsyncSession, *, conversation_id: int) -> Sequence[Message]:
    rows = await session.scalars(
        select(Message).where(Message.conversation_id == conversation_id).order_by(Message.id)
    )
    return rows.all()


async def has_messages(session: AsyncSession, *, conversation_id: int) -> bool:
    found = await session.scalar(
        select(Message.id).where(Message.conversation_id == conversation_id).limit(1)
    )
    return found is not None


async def update_conversation(
    session: AsyncSession, *, conversation_id: int, values: dict[str, Any]
) -> None:
    await session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id)
        .values(values)
        .execution_options(synchronize_session=False)
    )


async def delete_conversation(session: AsyncSession, *, conversation_id: int) -> None:
    # Explicit, so it does not depend on the backend enforcing ON DELETE CASCADE.
    await session.execute(delete(Message).where(Message.conversation_id == conversation_id))
    await session.execute(delete(Conversation).where(Conversation.id == conversation_id))
