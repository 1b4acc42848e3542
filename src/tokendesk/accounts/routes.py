"""Accounts REST API: the caller, API keys, users, teams and organizations.

HTTP only: every rule and every scope decision lives in the services.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from tokendesk.accounts import adjustments, api_keys, organizations, teams, users
from tokendesk.accounts.models import Role
from tokendesk.accounts.organizations import OrganizationView
from tokendesk.accounts.repository import LedgerRow, TeamRow, UserRow
from tokendesk.accounts.schemas import (
    AdjustmentIn,
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    BalanceOut,
    LedgerEntryOut,
    MeOut,
    OrganizationIn,
    OrganizationOut,
    OrganizationUpdate,
    Page,
    PoolOut,
    Ref,
    TeamIn,
    TeamOut,
    TeamUpdate,
    UserIn,
    UserOut,
    UserUpdate,
)
from tokendesk.bounds import Offset, QueryId, path_id
from tokendesk.deps import (
    AdminActor,
    AdminReader,
    CurrentActor,
    CurrentReader,
    DbSession,
    OrgAdminActor,
    ReadingActor,
    ReadSession,
    database_of,
    prepared_password,
    runtime_of,
)

router = APIRouter()

Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
UserId = Annotated[int, path_id("user")]
TeamId = Annotated[int, path_id("team")]
KeyId = Annotated[int, path_id("api key")]


def _user_out(row: UserRow) -> UserOut:
    user = row.user
    return UserOut(
        id=user.id,
        email=user.email,
        name=user.name,
        role=Role(user.role),
        team=Ref(id=user.team_id, name=row.team_name) if user.team_id and row.team_name else None,
        allocation_override=user.allocation_override,
        allocation_source=row.allocation_source,
        is_active=user.is_active,
        balance=BalanceOut.of(row.balance),
    )


def _team_out(row: TeamRow) -> TeamOut:
    return TeamOut(
        id=row.team.id,
        name=row.team.name,
        default_allocation=row.team.default_allocation,
        owners=[Ref(id=user_id, name=name) for user_id, name in row.owners],
        member_count=row.member_count,
    )


def _organization_out(view: OrganizationView) -> OrganizationOut:
    org = view.organization
    usage = view.pool_usage
    return OrganizationOut(
        id=org.id,
        name=org.name,
        default_allocation=org.default_allocation,
        reset_day=org.reset_day,
        timezone=org.timezone,
        max_request=org.max_request,
        pool=org.pool,
        low_balance_percent=org.low_balance_percent,
        carry_over_debt=org.carry_over_debt,
        password_sign_in=org.password_sign_in,
        provision_users=org.provision_users,
        provision_domains=organizations.domains_of(org.provision_domains),
        provision_team_id=org.provision_team_id,
        period_start=view.period_start,
        next_reset_at=view.next_reset_at,
        pool_usage=(
            PoolOut(
                pool=usage.pool,
                allocated=usage.allocated,
                granted=usage.granted,
                left=usage.left_before_adjustments,
            )
            if usage is not None
            else None
        ),
    )


def _ledger_out(row: LedgerRow) -> LedgerEntryOut:
    entry = row.entry
    return LedgerEntryOut(
        id=entry.id,
        kind=entry.kind,
        amount=entry.amount,
        period_start=entry.period_start,
        reason=entry.reason,
        actor=(
            Ref(id=entry.actor_id, name=row.actor_name)
            if entry.actor_id is not None and row.actor_name is not None
            else None
        ),
        token_request_id=entry.token_request_id,
        usage_event_id=entry.usage_event_id,
        created_at=entry.created_at,
    )


# --- the caller --------------------------------------------------------------------------


@router.get("/me", response_model=MeOut, tags=["me"])
async def read_me(session: ReadSession, actor: CurrentReader) -> MeOut:
    """The caller, their home organization and their balance for the current period.

    A super admin acting in another organization still sees their own home here.
    """
    me = await users.me(session, actor=actor)
    return MeOut(
        id=me.user.id,
        email=me.user.email,
        name=me.user.name,
        role=Role(me.user.role),
        organization=Ref(id=me.organization.id, name=me.organization.name),
        team=Ref(id=me.team.id, name=me.team.name) if me.team is not None else None,
        balance=BalanceOut.of(me.balance),
        low_balance_percent=me.organization.low_balance_percent,
        max_request=me.organization.max_request,
    )


@router.get("/me/api-keys", response_model=list[ApiKeyOut], tags=["api keys"])
async def list_my_keys(session: ReadSession, actor: CurrentReader) -> list[ApiKeyOut]:
    keys = await api_keys.list_own_keys(session, actor=actor)
    return [ApiKeyOut.model_validate(key) for key in keys]


@router.post(
    "/me/api-keys",
    response_model=ApiKeyCreated,
    status_code=status.HTTP_201_CREATED,
    tags=["api keys"],
)
async def create_my_key(
    session: DbSession, actor: CurrentActor, data: ApiKeyIn | None = None
) -> ApiKeyCreated:
    key, plain = await api_keys.create_own_key(session, actor=actor, name=(data or ApiKeyIn()).name)
    return ApiKeyCreated(**ApiKeyOut.model_validate(key).model_dump(), key=plain)


@router.delete("/me/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["api keys"])
async def revoke_my_key(key_id: KeyId, session: DbSession, actor: CurrentActor) -> Response:
    await api_keys.revoke_own_key(session, actor=actor, key_id=key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["api keys"])
async def revoke_key(key_id: KeyId, session: DbSession, actor: AdminActor) -> Response:
    """Revoke a key of anyone in the caller's scope; other keys answer 404."""
    await api_keys.revoke_key(session, actor=actor, key_id=key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- users -------------------------------------------------------------------------------


@router.get("/users", response_model=Page[UserOut], tags=["users"])
async def list_users(
    session: ReadSession,
    actor: AdminReader,
    q: Annotated[str | None, Query(max_length=200, description="Name or email contains")] = None,
    team_id: QueryId | None = None,
    role: Role | None = None,
    active: bool | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[UserOut]:
    rows, total = await users.list_users(
        session,
        actor=actor,
        q=q,
        team_id=team_id,
        role=role,
        active=active,
        limit=limit,
        offset=offset,
    )
    return Page[UserOut](items=[_user_out(row) for row in rows], total=total)


@router.post("/users", response_model=UserOut, status_code=status.HTTP_201_CREATED, tags=["users"])
async def create_user(data: UserIn, session: DbSession, actor: AdminActor) -> UserOut:
    """Org admins create users; team owners create members, only into a team they own."""
    return _user_out(await users.create_user_as(session, actor=actor, data=data))


@router.get("/users/{user_id}", response_model=UserOut, tags=["users"])
async def read_user(user_id: UserId, session: ReadSession, actor: CurrentReader) -> UserOut:
    return _user_out(await users.get_user(session, actor=actor, user_id=user_id))


@router.patch("/users/{user_id}", response_model=UserOut, tags=["users"])
async def update_user(
    user_id: UserId, data: UserUpdate, request: Request, actor: ReadingActor
) -> UserOut:
    """Change only the fields sent; ``null`` clears ``team_id`` or ``allocation_override``.

    Org admins change anything (granting super_admin takes a super admin); team owners
    change the override and team of their members, within teams they own; everyone
    changes their own name and password, never their own allocation, team or role.
    """
    database = database_of(request)
    new_password = await prepared_password(request, actor=actor, user_id=user_id, data=data)
    async with database.transaction() as session:
        row = await users.update_user(
            session, actor=actor, user_id=user_id, data=data, new_password=new_password
        )
    return _user_out(row)


@router.post("/users/{user_id}/adjustments", response_model=BalanceOut, tags=["users"])
async def adjust_balance(
    user_id: UserId, data: AdjustmentIn, session: DbSession, actor: AdminActor
) -> BalanceOut:
    """Correct the current period up or down, with a note; nobody adjusts their own."""
    balance = await adjustments.adjust_balance(
        session, actor=actor, user_id=user_id, amount=data.amount, note=data.note
    )
    return BalanceOut.of(balance)


@router.get("/users/{user_id}/ledger", response_model=Page[LedgerEntryOut], tags=["users"])
async def user_ledger(
    user_id: UserId,
    session: ReadSession,
    actor: CurrentReader,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[LedgerEntryOut]:
    rows, total = await users.ledger_entries(
        session, actor=actor, user_id=user_id, limit=limit, offset=offset
    )
    return Page[LedgerEntryOut](items=[_ledger_out(row) for row in rows], total=total)


@router.get("/users/{user_id}/api-keys", response_model=list[ApiKeyOut], tags=["api keys"])
async def list_user_keys(
    user_id: UserId, session: ReadSession, actor: AdminReader
) -> list[ApiKeyOut]:
    keys = await api_keys.list_user_keys(session, actor=actor, user_id=user_id)
    return [ApiKeyOut.model_validate(key) for key in keys]


# --- teams -------------------------------------------------------------------------------


@router.get("/teams", response_model=list[TeamOut], tags=["teams"])
async def list_teams(session: ReadSession, actor: CurrentReader) -> list[TeamOut]:
    return [_team_out(row) for row in await teams.list_teams(session, actor=actor)]


@router.get("/teams/{team_id}", response_model=TeamOut, tags=["teams"])
async def read_team(team_id: TeamId, session: ReadSession, actor: CurrentReader) -> TeamOut:
    return _team_out(await teams.get_team(session, actor=actor, team_id=team_id))


@router.post("/teams", response_model=TeamOut, status_code=status.HTTP_201_CREATED, tags=["teams"])
async def create_team(data: TeamIn, session: DbSession, actor: OrgAdminActor) -> TeamOut:
    return _team_out(await teams.create_team_as(session, actor=actor, data=data))


@router.patch("/teams/{team_id}", response_model=TeamOut, tags=["teams"])
async def update_team(
    team_id: TeamId, data: TeamUpdate, session: DbSession, actor: OrgAdminActor
) -> TeamOut:
    return _team_out(await teams.update_team(session, actor=actor, team_id=team_id, data=data))


@router.delete("/teams/{team_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["teams"])
async def delete_team(team_id: TeamId, session: DbSession, actor: OrgAdminActor) -> Response:
    """Members become team-less and fall back to the organization default at once."""
    await teams.delete_team(session, actor=actor, team_id=team_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- organizations -----------------------------------------------------------------------


@router.get("/organization", response_model=OrganizationOut, tags=["organization"])
async def read_organization(session: ReadSession, actor: AdminReader) -> OrganizationOut:
    return _organization_out(await organizations.get_settings(session, actor=actor))


@router.patch("/organization", response_model=OrganizationOut, tags=["organization"])
async def update_organization(
    data: OrganizationUpdate, session: DbSession, actor: OrgAdminActor, request: Request
) -> OrganizationOut:
    """Change only the fields sent; ``pool: null`` removes the pool.

    A new reset day or time zone moves the end of every current period to the new
    next reset; a new default allocation applies at once to everyone it governs.
    """
    view = await organizations.update_settings(
        session, actor=actor, data=data, sso_organizations=runtime_of(request).sso.organizations
    )
    return _organization_out(view)


@router.get("/organizations", response_model=list[OrganizationOut], tags=["organization"])
async def list_organizations(session: ReadSession, actor: CurrentReader) -> list[OrganizationOut]:
    views = await organizations.list_organizations(session, actor=actor)
    return [_organization_out(view) for view in views]


@router.post(
    "/organizations",
    response_model=OrganizationOut,
    status_code=status.HTTP_201_CREATED,
    tags=["organization"],
)
async def create_organization(
    data: OrganizationIn, session: DbSession, actor: CurrentActor, request: Request
) -> OrganizationOut:
    view = await organizations.create_organization_as(
        session, actor=actor, data=data, sso_organizations=runtime_of(request).sso.organizations
    )
    return _organization_out(view)
