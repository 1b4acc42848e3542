"""Organizations, teams, users, API keys and integrations, named by name."""

from __future__ import annotations

from typing import Annotated

import typer

from tokendesk.accounts import integrations
from tokendesk.accounts.api_keys import issue_api_key
from tokendesk.accounts.lookups import organization_by_name, team_by_name, user_by_email
from tokendesk.accounts.models import IdentityPreset, Role
from tokendesk.accounts.organizations import create_organization
from tokendesk.accounts.schemas import IntegrationIn, OrganizationIn, TeamIn, UserIn
from tokendesk.accounts.teams import add_team_owner, create_team
from tokendesk.accounts.users import create_user
from tokendesk.cli.common import fail, run, validated
from tokendesk.db import Database

org_app = typer.Typer(help="Organizations.", no_args_is_help=True)
team_app = typer.Typer(help="Teams and their owners.", no_args_is_help=True)
user_app = typer.Typer(help="Users.", no_args_is_help=True)
apikey_app = typer.Typer(
    help="Personal API keys, and integration keys for chat apps.", no_args_is_help=True
)
integration_app = typer.Typer(
    help="Integrations: the keys chat apps call the gateway with for an organization's users.",
    no_args_is_help=True,
)

OrgName = Annotated[str, typer.Option("--org", help="Organization, by name.")]


@org_app.command("create")
def org_create(
    name: Annotated[str, typer.Option(help="Unique organization name.")],
    allocation: Annotated[
        int, typer.Option(help="Default monthly allocation in tokens for every user.")
    ] = 100_000,
    reset_day: Annotated[
        int, typer.Option(help="Day of the month (1-28) on which balances reset.")
    ] = 1,
    timezone: Annotated[
        str, typer.Option(help="IANA time zone the reset day is counted in, e.g. Europe/Berlin.")
    ] = "UTC",
    max_request: Annotated[
        int, typer.Option(help="Largest amount one token request may ask for.")
    ] = 1_000_000,
    pool: Annotated[
        int | None,
        typer.Option(help="Monthly ceiling on allocations plus grants. Default: no pool."),
    ] = None,
) -> None:
    """Create an organization."""
    data = validated(
        OrganizationIn,
        {
            "name": "--name",
            "default_allocation": "--allocation",
            "reset_day": "--reset-day",
            "timezone": "--timezone",
            "max_request": "--max-request",
            "pool": "--pool",
        },
        {
            "name": name,
            "default_allocation": allocation,
            "reset_day": reset_day,
            "timezone": timezone,
            "max_request": max_request,
            "pool": pool,
        },
    )

    async def work(database: Database) -> int:
        async with database.transaction() as session:
            org = await create_organization(session, **data.model_dump())
            return org.id

    org_id = run(work)
    typer.echo(f"created organization {data.name!r} (id {org_id})")


@team_app.command("create")
def team_create(
    org: OrgName,
    name: Annotated[str, typer.Option(help="Team name, unique within the organization.")],
    allocation: Annotated[
        int | None,
        typer.Option(help="Default monthly allocation for the team's members. Default: none."),
    ] = None,
) -> None:
    """Create a team in an organization."""
    data = validated(
        TeamIn,
        {"name": "--name", "default_allocation": "--allocation"},
        {"name": name, "default_allocation": allocation},
    )

    async def work(database: Database) -> int:
        async with database.transaction() as session:
            organization = await organization_by_name(session, org)
            team = await create_team(session, organization_id=organization.id, **data.model_dump())
            return team.id

    team_id = run(work)
    typer.echo(f"created team {data.name!r} (id {team_id}) in {org!r}")


@team_app.command("add-owner")
def team_add_owner(
    org: OrgName,
    team: Annotated[str, typer.Option(help="Team, by name.")],
    email: Annotated[str, typer.Option(help="Email of the user who becomes an owner.")],
) -> None:
    """Make a user an owner of a team (a member becomes a team owner)."""

    async def work(database: Database) -> None:
        async with database.transaction() as session:
            organization = await organization_by_name(session, org)
            found = await team_by_name(session, organization_id=organization.id, name=team)
            user = await user_by_email(session, email)
            await add_team_owner(session, team=found, user=user)

    run(work)
    typer.echo(f"{email} now owns team {team!r} in {org!r}")


@user_app.command("create")
def user_create(
    org: OrgName,
    email: Annotated[str, typer.Option(help="Email address, unique across organizations.")],
    name: Annotated[str, typer.Option(help="Display name.")],
    role: Annotated[
        Role,
        typer.Option(
            help="member, team_owner (decides for the teams they own; see `team add-owner`), "
            "org_admin or super_admin."
        ),
    ],
    team: Annotated[str | None, typer.Option(help="Team to join, by name. Default: none.")] = None,
    password: Annotated[
        str | None,
        typer.Option(help="Password for the web sign-in (8+ characters). Default: API key only."),
    ] = None,
    allocation: Annotated[
        int | None,
        typer.Option(help="Personal monthly allocation, overriding team and org defaults."),
    ] = None,
) -> None:
    """Create a user; their current period opens with the full allocation."""
    data = validated(
        UserIn,
        {"allocation_override": "--allocation"},
        {
            "email": email,
            "name": name,
            "role": role,
            "password": password,
            "allocation_override": allocation,
        },
    )

    async def work(database: Database) -> int:
        async with database.transaction() as session:
            organization = await organization_by_name(session, org)
            team_id = None
            if team is not None:
                found = await team_by_name(session, organization_id=organization.id, name=team)
                team_id = found.id
            user = await create_user(
                session,
                organization_id=organization.id,
                email=data.email,
                name=data.name,
                role=data.role,
                team_id=team_id,
                allocation_override=data.allocation_override,
                password=data.password,
            )
            return user.id

    user_id = run(work)
    typer.echo(f"created {data.role.value} {data.email} (id {user_id}) in {org!r}")


@apikey_app.command("create")
def apikey_create(
    email: Annotated[
        str | None, typer.Option(help="Email of the user a personal key acts as.")
    ] = None,
    name: Annotated[str, typer.Option(help="Label that tells this key apart.")] = "default",
    integration: Annotated[
        bool,
        typer.Option(
            "--integration",
            help="An integration key for a chat app (with --org): it speaks only for the "
            "users the chat app names, only at the gateway.",
        ),
    ] = False,
    org: Annotated[
        str | None, typer.Option("--org", help="Organization of an integration key, by name.")
    ] = None,
    preset: Annotated[
        IdentityPreset,
        typer.Option(help="Where the chat app names its user: open-webui, librechat or generic."),
    ] = IdentityPreset.GENERIC,
    jwt_secret: Annotated[
        str | None,
        typer.Option(
            help="Open WebUI's FORWARD_USER_INFO_HEADER_JWT_SECRET: set, only a signed "
            "identity counts (16-500 characters)."
        ),
    ] = None,
    user_id_header: Annotated[
        str | None, typer.Option(help="Header naming the user's id, instead of the preset's.")
    ] = None,
    email_header: Annotated[
        str | None, typer.Option(help="Header naming the user's email, instead of the preset's.")
    ] = None,
    name_header: Annotated[
        str | None, typer.Option(help="Header naming the user's name, instead of the preset's.")
    ] = None,
) -> None:
    """Issue an API key; it is printed once, alone on the last line of output."""
    if integration:
        if email is not None:
            fail("--email: an integration key belongs to an organization (--org), not a user")
        if org is None:
            fail("--org: an integration key needs its organization")
        _integration_create(
            org,
            {
                "name": name,
                "preset": preset,
                "jwt_secret": jwt_secret,
                "user_id_header": user_id_header,
                "email_header": email_header,
                "name_header": name_header,
            },
        )
        return
    extra = {
        "--org": org,
        "--jwt-secret": jwt_secret,
        "--user-id-header": user_id_header,
        "--email-header": email_header,
        "--name-header": name_header,
    }
    for option, value in extra.items():
        if value is not None:
            fail(f"{option}: only for an integration key (--integration)")
    if email is None:
        fail("--email: a personal key needs the user it acts as (or use --integration)")
    if not name.strip():
        fail("--name: must not be blank")

    async def work(database: Database) -> str:
        async with database.transaction() as session:
            user = await user_by_email(session, email)
            _, key = await issue_api_key(session, user=user, name=name.strip())
            return key

    key = run(work)
    typer.echo(f"API key {name.strip()!r} for {email} (shown once; store it now):")
    typer.echo(key)


def _integration_create(org: str, values: dict[str, object]) -> None:
    options = {
        "name": "--name",
        "preset": "--preset",
        "jwt_secret": "--jwt-secret",
        "user_id_header": "--user-id-header",
        "email_header": "--email-header",
        "name_header": "--name-header",
    }
    data = validated(IntegrationIn, options, values)

    async def work(database: Database) -> str:
        async with database.transaction() as session:
            organization = await organization_by_name(session, org)
            _, key = await integrations.create_integration(
                session, organization_id=organization.id, **data.model_dump()
            )
            return key

    key = run(work)
    typer.echo(
        f"integration key {data.name!r} ({data.preset.value}) for {org!r} "
        "(shown once; store it now):"
    )
    typer.echo(key)


@integration_app.command("list")
def integration_list(org: OrgName) -> None:
    """List an organization's integrations: id, name, preset, key prefix, last use, status."""

    async def work(database: Database) -> list[str]:
        async with database.transaction(write=False) as session:
            organization = await organization_by_name(session, org)
            rows = await integrations.integrations_of(session, organization_id=organization.id)
            return [
                "\t".join(
                    (
                        str(row.id),
                        row.name,
                        row.preset,
                        row.prefix + "...",
                        f"last used {row.last_used_at:%Y-%m-%d %H:%M} UTC"
                        if row.last_used_at
                        else "never used",
                        "revoked" if row.revoked_at else "active",
                    )
                )
                for row in rows
            ]

    lines = run(work)
    if not lines:
        typer.echo(f"no integrations in {org!r}")
    for line in lines:
        typer.echo(line)


@integration_app.command("revoke")
def integration_revoke(
    integration_id: Annotated[int, typer.Argument(help="Id of the integration (see `list`).")],
) -> None:
    """Revoke an integration's key: the gateway refuses it from the next call on."""

    async def work(database: Database) -> str:
        async with database.transaction() as session:
            revoked = await integrations.revoke(session, integration_id=integration_id)
            return revoked.name

    name = run(work)
    typer.echo(f"revoked integration {integration_id} ({name!r})")
