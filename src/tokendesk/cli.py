"""The operator CLI: thin commands over the same services the API uses.

Each command opens the configured database, does its work in one unit of work
(``Database.transaction``) and disposes of the engine. Domain errors end the
command with a one-line message on stderr and exit status 1; usage errors
(an unknown option, a missing argument) exit with status 2, as is usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tokendesk import __version__
from tokendesk.accounts import service as accounts
from tokendesk.accounts.models import Role, User
from tokendesk.accounts.schemas import OrganizationIn, TeamIn, UserIn
from tokendesk.config import Settings, get_settings
from tokendesk.db import Database
from tokendesk.errors import AppError
from tokendesk.ledger import scheduler
from tokendesk.ledger.doctor import Mismatch, check_balances
from tokendesk.ledger.models import Balance
from tokendesk.migrations import runner

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

app = typer.Typer(
    name="tokendesk",
    help="Operate tokendesk: serve the app, migrate the database, manage organizations, "
    "teams, users and API keys. Settings come from TOKENDESK_* environment variables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
reset_app = typer.Typer(help="Monthly resets and expired holds.", no_args_is_help=True)
org_app = typer.Typer(help="Organizations.", no_args_is_help=True)
team_app = typer.Typer(help="Teams and their owners.", no_args_is_help=True)
user_app = typer.Typer(help="Users.", no_args_is_help=True)
apikey_app = typer.Typer(help="Personal API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(reset_app, name="reset")
app.add_typer(org_app, name="org")
app.add_typer(team_app, name="team")
app.add_typer(user_app, name="user")
app.add_typer(apikey_app, name="apikey")


# --- plumbing -----------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"TOKENDESK_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        _fail(f"bad setting: {problems}")


def _shown_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _database_problem(exc: DBAPIError) -> str:
    detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    if "no such table" in detail or "does not exist" in detail:
        return f"{detail}: the database has no tokendesk schema; run `tokendesk db upgrade` first"
    return f"database error: {detail}"


def _run(work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work`` against the configured database and turn known failures into messages."""
    url = _settings().database_url

    async def main() -> T:
        database = Database(url)
        try:
            return await work(database)
        finally:
            await database.dispose()

    try:
        return asyncio.run(main())
    except AppError as exc:
        _fail(exc.message)
    except DBAPIError as exc:
        _fail(_database_problem(exc))
    except OSError as exc:
        # asyncpg raises plain OSErrors (connection refused, unknown host) before any DBAPI layer.
        _fail(f"cannot reach the database at {_shown_url(url)}: {exc}")


def _validated(model: type[M], options: dict[str, str], values: dict[str, Any]) -> M:
    """Check CLI input with the API's own schema, naming the CLI option in the message."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "input"
            problems.append(f"{options.get(field, field)}: {err['msg']}")
        _fail("; ".join(problems))


def _upgrade(url: str) -> None:
    try:
        runner.upgrade(url)
    except DBAPIError as exc:
        _fail(_database_problem(exc))
    except OSError as exc:
        _fail(f"cannot reach the database at {_shown_url(url)}: {exc}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tokendesk {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Operate tokendesk."""


# --- running ------------------------------------------------------------------------------


async def _schema_lag(database: Database) -> tuple[str | None, str | None]:
    """The database's migration revision and the one this code needs."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(runner.alembic_config(database.url)).get_current_head()
    async with database.write_engine.connect() as conn:
        current = await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
    return current, head


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind. Default: TOKENDESK_HOST (127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on. Default: TOKENDESK_PORT (8000).")
    ] = None,
    reload: Annotated[
        bool,
        typer.Option("--reload/--no-reload", help="Restart on code changes (development only)."),
    ] = False,
) -> None:
    """Serve the web app, API and gateway with uvicorn (runs the scheduler in-process)."""
    import uvicorn

    settings = _settings()
    try:
        settings.check_secret()
    except SystemExit as exc:
        _fail(str(exc.code))
    current, head = _run(_schema_lag)
    if current != head:
        _fail(
            f"the database schema is at revision {current or 'none'} but this version needs "
            f"{head}; run `tokendesk db upgrade` first"
        )
    uvicorn.run(
        "tokendesk.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        reload=reload,
        log_level=settings.log_level,
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration (the migrations ship inside the package)."""
    url = _settings().database_url
    _upgrade(url)
    typer.echo(f"database {_shown_url(url)} is at the latest schema")


@app.command()
def demo() -> None:
    """Migrate, then seed the demo organizations, users, usage and requests (only once)."""
    from tokendesk.demo import DEMO_ORGANIZATION, DEMO_PASSWORD, seed_demo

    _upgrade(_settings().database_url)
    info = _run(seed_demo)
    if info.created:
        typer.echo(f"Seeded demo data: {', '.join(info.organizations)}.")
    else:
        typer.echo(f"Demo organization {DEMO_ORGANIZATION!r} already exists; nothing seeded.")
    typer.echo(f'Every demo user signs in with the password "{DEMO_PASSWORD}".\n')
    rows = [("EMAIL", "ROLE", "ORGANIZATION", "TEAM", "PASSWORD")]
    rows += [
        (login.email, login.role, login.organization, login.team or "-", DEMO_PASSWORD)
        for login in info.logins
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        typer.echo(line.rstrip())
    typer.echo("")
    keys = [(login.email, login.api_key) for login in info.logins if login.api_key]
    if keys:
        typer.echo('API keys (shown once; send as "Authorization: Bearer <key>"):')
        width = max(len(email) for email, _ in keys)
        for email, key in keys:
            typer.echo(f"  {email.ljust(width)}  {key}")
    else:
        typer.echo(
            "API keys are shown only when they are created; "
            "issue one with `tokendesk apikey create --email EMAIL`."
        )


@reset_app.command("run")
def reset_run() -> None:
    """Reset every balance whose period has ended and release expired holds, once."""
    result = _run(scheduler.run_once)
    typer.echo(f"{result.reset} balances reset, {result.expired} holds expired")


@app.command()
def doctor() -> None:
    """Recompute every cached balance from the ledger; exit 1 on any mismatch."""

    async def check(database: Database) -> tuple[list[Mismatch], int, dict[int, str]]:
        async with database.transaction(write=False) as session:
            mismatches = await check_balances(session)
            total = await session.scalar(select(func.count()).select_from(Balance)) or 0
            ids = {m.user_id for m in mismatches}
            emails = dict(
                (await session.execute(select(User.id, User.email).where(User.id.in_(ids)))).all()
            )
        return mismatches, total, emails

    mismatches, total, emails = _run(check)
    if not mismatches:
        typer.echo(f"all {total} balances match the ledger")
        return
    for m in mismatches:
        typer.echo(
            f"user {m.user_id} <{emails.get(m.user_id, '?')}>: {m.column} is {m.cached} "
            f"in the balance row but {m.ledger} by the ledger"
        )
    users = len({m.user_id for m in mismatches})
    typer.echo(f"{users} of {total} balances disagree with the ledger", err=True)
    raise typer.Exit(1)


# --- accounts -----------------------------------------------------------------------------

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
    data = _validated(
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
            org = await accounts.create_organization(
                session,
                name=data.name,
                default_allocation=data.default_allocation,
                reset_day=data.reset_day,
                timezone=data.timezone,
                max_request=data.max_request,
                pool=data.pool,
            )
            return org.id

    org_id = _run(work)
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
    data = _validated(
        TeamIn,
        {"name": "--name", "default_allocation": "--allocation"},
        {"name": name, "default_allocation": allocation},
    )

    async def work(database: Database) -> int:
        async with database.transaction() as session:
            organization = await accounts.organization_by_name(session, org)
            team = await accounts.create_team(
                session,
                organization_id=organization.id,
                name=data.name,
                default_allocation=data.default_allocation,
            )
            return team.id

    team_id = _run(work)
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
            organization = await accounts.organization_by_name(session, org)
            found = await accounts.team_by_name(session, organization_id=organization.id, name=team)
            user = await accounts.user_by_email(session, email)
            await accounts.add_team_owner(session, team=found, user=user)

    _run(work)
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
    data = _validated(
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
            organization = await accounts.organization_by_name(session, org)
            team_id = None
            if team is not None:
                found = await accounts.team_by_name(
                    session, organization_id=organization.id, name=team
                )
                team_id = found.id
            user = await accounts.create_user(
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

    user_id = _run(work)
    typer.echo(f"created {data.role.value} {data.email} (id {user_id}) in {org!r}")


@apikey_app.command("create")
def apikey_create(
    email: Annotated[str, typer.Option(help="Email of the user the key acts as.")],
    name: Annotated[str, typer.Option(help="Label that tells this key apart.")] = "default",
) -> None:
    """Issue an API key; it is printed once, alone on the last line of output."""
    if not name.strip():
        _fail("--name: must not be blank")

    async def work(database: Database) -> str:
        async with database.transaction() as session:
            user = await accounts.user_by_email(session, email)
            _, key = await accounts.issue_api_key(session, user=user, name=name.strip())
            return key

    key = _run(work)
    typer.echo(f"API key {name.strip()!r} for {email} (shown once; store it now):")
    typer.echo(key)


if __name__ == "__main__":
    app()
