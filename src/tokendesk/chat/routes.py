"""``/api/v1/conversations``: a member's chat history (HTTP only; rules live in the service)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from tokendesk.bounds import Offset, path_id
from tokendesk.chat import service
from tokendesk.chat.schemas import (
    ConversationDetail,
    ConversationIn,
    ConversationOut,
    ConversationPage,
    ConversationUpdate,
    MessageIn,
    MessageOut,
)
from tokendesk.deps import AppSettings, CurrentActor, CurrentReader, DbSession, ReadSession

router = APIRouter(prefix="/conversations", tags=["conversations"])

ConversationId = Annotated[int, path_id("conversation")]


@router.get("", response_model=ConversationPage)
async def list_conversations(
    actor: CurrentReader,
    session: ReadSession,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Offset = 0,
) -> ConversationPage:
    items, total = await service.list_conversations(
        session, actor=actor, limit=limit, offset=offset
    )
    return ConversationPage(
        items=[ConversationOut.model_validate(item) for item in items], total=total
    )


@router.post("", response_model=ConversationOut, status_code=201)
async def create_conversation(
    body: ConversationIn, actor: CurrentActor, session: DbSession, settings: AppSettings
) -> ConversationOut:
    conversation = await service.create_conversation(
        session,
        actor=actor,
        title=body.title,
        model=body.model,
        max_conversations=settings.conversations_per_user,
    )
    return ConversationOut.model_validate(conversation)


@router.get("/{conversation_id}", response_model=ConversationDetail)
async def get_conversation(
    conversation_id: ConversationId, actor: CurrentReader, session: ReadSession
) -> ConversationDetail:
    found = await service.get_with_messages(session, actor=actor, conversation_id=conversation_id)
    return ConversationDetail(
        **ConversationOut.model_validate(found.conversation).model_dump(),
        messages=[MessageOut.model_validate(m) for m in found.messages],
    )


@router.patch("/{conversation_id}", response_model=ConversationOut)
async def update_conversation(
    conversation_id: ConversationId,
    body: ConversationUpdate,
    actor: CurrentActor,
    session: DbSession,
) -> ConversationOut:
    conversation = await service.update_conversation(
        session, actor=actor, conversation_id=conversation_id, title=body.title, model=body.model
    )
    return ConversationOut.model_validate(conversation)


@router.delete("/{conversation_id}", status_code=204)
async def delete_conversation(
    conversation_id: ConversationId, actor: CurrentActor, session: DbSession
) -> Response:
    await service.delete_conversation(session, actor=actor, conversation_id=conversation_id)
    return Response(status_code=204)


@router.post("/{conversation_id}/messages", response_model=MessageOut, status_code=201)
async def add_message(
    conversation_id: ConversationId,
    body: MessageIn,
    actor: CurrentActor,
    session: DbSession,
    settings: AppSettings,
) -> MessageOut:
    message = await service.add_message(
        session,
        actor=actor,
        conversation_id=conversation_id,
        role=body.role,
        content=body.content,
        tokens=body.tokens,
        max_chars=settings.message_max_chars,
    )
    return MessageOut.model_validate(message)
