"""Running tokendesk: serve, migrate, seed the demo, reset and check the ledger."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Annotated

import typer
from sqlalchemy import func, select

from tokendesk.accounts.models import Organization, User
from tokendesk.audit import service as audit
from tokendesk.cli.common import fail, load_settings, run, shown_url, upgrade
from tokendesk.config import InsecureSecret
from tokendesk.db import Database
from tokendesk.ledger import scheduler
from tokendesk.ledger.doctor import Mismatch, check_balances, check_references
from tokendesk.ledger.models import Balance
from tokendesk.metering import rollup_check
from tokendesk.migrations import runner
from tokendesk.observability.logs import uvicorn_log_config

db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
reset_app = typer.Typer(help="Monthly resets and expired holds.", no_args_is_help=True)


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


SQLITE_ONE_WORKER = (
    "--workers {workers} needs PostgreSQL: on SQLite the event bus lives inside one "
    "process, so a decision taken in one worker would never reach the event streams, "
    "key caches and gateway of the others, and the workers would queue for SQLite's "
    "single writer; serve one worker, or set TOKENDESK_DATABASE_URL to a PostgreSQL "
    "database"
)


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
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Server processes on the one port, each a whole instance (scheduler, "
            "event bus listener, notification worker); more than 1 needs PostgreSQL.",
        ),
    ] = 1,
) -> None:
    """Serve the web app, API and gateway with uvicorn (runs the scheduler in-process).

    SIGTERM stops it gracefully within TOKENDESK_SHUTDOWN_GRACE_SECONDS, exit status 0."""
    import uvicorn

    settings = load_settings()
    try:
        settings.check_secret()
    except InsecureSecret as exc:
        fail(str(exc))
    if workers > 1:
        if settings.is_sqlite:
            fail(SQLITE_ONE_WORKER.format(workers=workers))
        if settings.event_bus == "memory":
            fail(
                f"--workers {workers} needs the PostgreSQL event bus, but "
                "TOKENDESK_EVENT_BUS=memory keeps each worker's events to itself; "
                "set it to auto or postgres"
            )
        if reload:
            fail("--reload serves one worker; leave out --workers")
    current, head = run(_schema_lag)
    if current != head:
        fail(
            f"the database schema is at revision {current or 'none'} but this version needs "
            f"{head}; run `tokendesk db upgrade` first"
        )
    # uvicorn stops on SIGTERM and then signals itself again; the server stopped
    # gracefully, so that second SIGTERM ends the process with status 0, not 143.
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.run(
        "tokendesk.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        reload=reload,
        workers=workers,
        log_level=settings.log_level,
        # The request log (tokendesk.request) says more, for less, than uvicorn's access log.
        access_log=False,
        log_config=uvicorn_log_config(settings.log_format),
        # The login limiter must see the client behind a trusted proxy, not the proxy.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        # Calls in flight get this long after SIGTERM; the rest of the grace period is
        # for settling them (Runtime.begin_shutdown, stopping_on_signals).
        timeout_graceful_shutdown=settings.shutdown_calls_seconds,  # type: ignore[arg-type]
    )


def _stopped(_sig: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration (the migrations ship inside the package)."""
    url = load_settings().database_url
    upgrade(url)
    typer.echo(f"database {shown_url(url)} is at the latest schema")


def demo() -> None:
    """Migrate, then seed the demo organizations, users, usage and requests (only once)."""
    from tokendesk.demo import DEMO_ORGANIZATION, DEMO_PASSWORD, seed_demo

    upgrade(load_settings().database_url)
    info = run(seed_demo)
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
    result = run(scheduler.run_once)
    typer.echo(f"{result.reset} balances reset, {result.expired} holds expired")


def doctor(
    rollups: Annotated[
        bool,
        typer.Option(
            "--rollups",
            help="Also recompute the analytics rollups from the raw usage events (reads "
            "every event: slow on a large database). Rollups of teams deleted since keep "
            "their team while the events forget it, and are reported.",
        ),
    ] = False,
) -> None:
    """Recompute every cached balance from the ledger and check the ledger's and the
    audit log's references; exit 1 on any mismatch."""

    async def check(database: Database) -> tuple[list[Mismatch], int, dict[int, str], list[str]]:
        async with database.transaction(write=False) as session:
            mismatches = await check_balances(session)
            total = await session.scalar(select(func.count()).select_from(Balance)) or 0
            ids = {m.user_id for m in mismatches}
            emails = dict(
                (await session.execute(select(User.id, User.email).where(User.id.in_(ids)))).all()
            )
            problems = await check_references(session) + await audit.check_references(session)
            if rollups:
                for org_id in (await session.scalars(select(Organization.id))).all():
                    problems += [
                        f"rollup differs from raw events: {difference}"
                        for difference in await rollup_check.differences(
                            session, organization_id=org_id
                        )
                    ]
        return mismatches, total, emails, problems

    mismatches, total, emails, problems = run(check)
    for problem in problems:
        typer.echo(problem)
    if not mismatches and not problems:
        checked = " and the rollups match the raw events" if rollups else ""
        typer.echo(f"all {total} balances match the ledger{checked}")
        return
    for m in mismatches:
        typer.echo(
            f"user {m.user_id} <{emails.get(m.user_id, '?')}>: {m.column} is {m.cached} "
            f"in the balance row but {m.ledger} by the ledger"
        )
    users = len({m.user_id for m in mismatches})
    typer.echo(
        f"{users} of {total} balances disagree with the ledger; {len(problems)} other problems",
        err=True,
    )
    raise typer.Exit(1)
