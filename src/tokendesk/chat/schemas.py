"""Pydantic shapes for conversations and their messages."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from tokendesk.accounts.schemas import stripped
from tokendesk.bounds import EventTokens
from tokendesk.chat.models import MessageRole

MAX_TITLE = 200
MAX_MODEL = 200

Title = Annotated[str, Field(min_length=1, max_length=MAX_TITLE)]
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConversationIn(StrictModel):
    title: Title | None = Field(
        default=None, description="Left out: named after the first message."
    )
    model: ModelName | None = None

    _clean = field_validator("title", "model")(stripped)


class ConversationUpdate(StrictModel):
    """Rename a conversation or switch its model; absent fields stay as they are."""

    title: Title | None = None
    model: ModelName | None = None

    _clean = field_validator("title", "model")(stripped)


class MessageIn(StrictModel):
    role: MessageRole
    content: str = Field(
        min_length=1, description="At most TOKENDESK_MESSAGE_MAX_CHARS characters."
    )
    # What the gateway reported for one reply: no more than one usage event may carry.
    tokens: EventTokens | None = None

    @field_validator("content")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("blank", "must not be blank")
        return value


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    role: MessageRole
    content: str
    tokens: int | None
    created_at: datetime


class ConversationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    model: str | None
    created_at: datetime
    updated_at: datetime


class ConversationDetail(ConversationOut):
    messages: list[MessageOut]


class ConversationPage(BaseModel):
    items: list[ConversationOut]
    total: int
