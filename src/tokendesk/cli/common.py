"""Plumbing shared by the CLI commands: settings, the database and one-line errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tokendesk.config import Settings, get_settings
from tokendesk.db import Database
from tokendesk.errors import AppError
from tokendesk.migrations import runner

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def load_settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"TOKENDESK_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        fail(f"bad setting: {problems}")


def shown_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def database_problem(exc: DBAPIError) -> str:
    detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    if "no such table" in detail or "does not exist" in detail:
        return f"{detail}: the database has no tokendesk schema; run `tokendesk db upgrade` first"
    return f"database error: {detail}"


def run(work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work`` against the configured database and turn known failures into messages."""
    url = load_settings().database_url

    async def main() -> T:
        database = Database(url)
        try:
            return await work(database)
        finally:
            await database.dispose()

    try:
        return asyncio.run(main())
    except AppError as exc:
        fail(exc.message)
    except DBAPIError as exc:
        fail(database_problem(exc))
    except OSError as exc:
        # asyncpg raises plain OSErrors (connection refused, unknown host) before any DBAPI layer.
        fail(f"cannot reach the database at {shown_url(url)}: {exc}")


def validated(model: type[M], options: dict[str, str], values: dict[str, Any]) -> M:
    """Check CLI input with the API's own schema, naming the CLI option in the message."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "input"
            problems.append(f"{options.get(field, field)}: {err['msg']}")
        fail("; ".join(problems))


def upgrade(url: str) -> None:
    try:
        runner.upgrade(url)
    except runner.MigrationRefused as exc:
        fail(f"database not upgraded: {exc}")
    except DBAPIError as exc:
        fail(database_problem(exc))
    except OSError as exc:
        fail(f"cannot reach the database at {shown_url(url)}: {exc}")
