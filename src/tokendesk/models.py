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
from tokendesk.notifications.models import (
    Attempt,
    EmailOptOut,
    Notification,
    OrgNotificationSettings,
    ThresholdAlert,
    Webhook,
)
from tokendesk.token_requests.models import ApprovalRule, RequestStatus, TokenRequest

__all__ = [
    "ApiKey",
    "ApprovalRule",
    "Attempt",
    "AuditEntry",
    "Balance",
    "Base",
    "Conversation",
    "EmailOptOut",
    "EntryKind",
    "LedgerEntry",
    "LoginSession",
    "Message",
    "Notification",
    "OrgNotificationSettings",
    "Organization",
    "RequestStatus",
    "Reservation",
    "Role",
    "Team",
    "TeamOwner",
    "ThresholdAlert",
    "TokenRequest",
    "UsageCumulative",
    "UsageEvent",
    "UsageModelDaily",
    "UsageSeries",
    "UsageTeamDaily",
    "User",
    "Webhook",
]
