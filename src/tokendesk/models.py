"""Imports every ORM model so ``Base.metadata`` is complete (Alembic, tests)."""

from tokendesk.accounts.models import (
    ApiKey,
    LoginSession,
    Organization,
    Role,
    Team,
    TeamOwner,
    User,
)
from tokendesk.audit.models import AuditEntry
from tokendesk.chat.models import Conversation, Message
from tokendesk.db import Base
from tokendesk.ledger.models import Balance, EntryKind, LedgerEntry, Reservation
from tokendesk.metering.models import (
    UsageCumulative,
    UsageEvent,
    UsageModelDaily,
    UsageSeries,
    UsageTeamDaily,
)
from tokendesk.token_requests.models import RequestStatus, TokenRequest

__all__ = [
    "ApiKey",
    "AuditEntry",
    "Balance",
    "Base",
    "Conversation",
    "EntryKind",
    "LedgerEntry",
    "LoginSession",
    "Message",
    "Organization",
    "RequestStatus",
    "Reservation",
    "Role",
    "Team",
    "TeamOwner",
    "TokenRequest",
    "UsageCumulative",
    "UsageEvent",
    "UsageModelDaily",
    "UsageSeries",
    "UsageTeamDaily",
    "User",
]
