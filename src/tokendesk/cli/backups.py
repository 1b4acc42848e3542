"""Backups of a SQLite database while it serves, and putting one back.

``backup`` copies with SQLite's online backup API in a single step: one read
transaction, so the copy is the database as of one commit, while the server
goes on writing (WAL mode: readers never block writers). ``restore`` writes a
backup over the database, through the same API, only while no server holds the
database's lock (:mod:`tokendesk.db.serving_lock`), and keeps what it replaced
beside it. PostgreSQL has its own tools for both; each command names them.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from alembic.script import ScriptDirectory

from tokendesk.cli.common import fail, load_settings
from tokendesk.db.serving_lock import DatabaseBusy, held, lock_path, sqlite_path
from tokendesk.migrations import runner

POSTGRES_BACKUP = (
    "tokendesk backup copies a SQLite database; on PostgreSQL use pg_dump, which takes a "
    'consistent copy while the servers run: pg_dump -Fc -f tokendesk.dump "$DATABASE" '
    "(README: Backups)"
)
POSTGRES_RESTORE = (
    "tokendesk restore puts back a SQLite backup; on PostgreSQL stop every server, then "
    'pg_restore --clean --if-exists --no-owner -d "$DATABASE" tokendesk.dump, '
    "tokendesk db upgrade and tokendesk doctor (README: Backups)"
)
# How long a copy waits for a write transaction of the server to end before giving up.
BUSY_SECONDS = 30.0


def _copy(source: Path, target: Path) -> None:
    """``source`` as of one commit into ``target``, by SQLite's backup API."""
    with sqlite3.connect(source, timeout=BUSY_SECONDS) as reader:
        writer = sqlite3.connect(target, timeout=BUSY_SECONDS)
        try:
            # pages=-1: every page in one step, under one read transaction (consistent).
            reader.backup(writer, pages=-1)
        finally:
            writer.close()


def _inspect(path: Path) -> str:
    """The migration revision of the tokendesk database at ``path``, after SQLite's
    integrity check; fails naming what is wrong."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            problems = [row[0] for row in connection.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                fail(f"{path} fails SQLite's integrity check: {'; '.join(problems[:5])}")
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.DatabaseError as exc:
        fail(f"{path} is not a tokendesk SQLite database ({exc})")
    if len(rows) != 1:
        fail(f"{path} is not a tokendesk database: it records no single migration revision")
    return str(rows[0][0])


def _self_contained(path: Path) -> None:
    """Make the copy one file: no write-ahead log beside it, its pages on disk."""
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode=DELETE")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _database() -> Path:
    url = load_settings().database_url
    path = sqlite_path(url)
    if path is None:
        fail(POSTGRES_BACKUP if url.startswith("postgresql") else "not a SQLite database file")
    return path


def backup(
    path: Annotated[Path, typer.Argument(help="The file to write; must not exist yet.")],
) -> None:
    """Copy the SQLite database to PATH, consistent, while servers keep running."""
    source = _database()
    if not source.is_file():
        fail(f"there is no database at {source}")
    target = path.absolute()
    if target.exists() or target == source:
        fail(f"{target} exists already; a backup never overwrites a file: name a new one")
    if not target.parent.is_dir():
        fail(f"{target.parent} is not a folder")
    partial = target.with_name(target.name + ".partial")
    try:
        _copy(source, partial)
        _self_contained(partial)
        revision = _inspect(partial)
        os.replace(partial, target)
    except (sqlite3.Error, OSError) as exc:
        fail(f"backup failed, nothing written to {target}: {exc}")
    finally:
        partial.unlink(missing_ok=True)
    size = target.stat().st_size
    typer.echo(f"backed up {source} to {target} ({size} bytes, schema revision {revision})")


def restore(
    path: Annotated[Path, typer.Argument(help="A file `tokendesk backup` wrote.")],
) -> None:
    """Put the backup at PATH in place of the SQLite database; refused while a server
    runs on it. What it replaces is kept beside it (.before-restore-<time>)."""
    url = load_settings().database_url
    target = sqlite_path(url)
    if target is None:
        fail(POSTGRES_RESTORE if url.startswith("postgresql") else "not a SQLite database file")
    source = path.absolute()
    if not source.is_file():
        fail(f"there is no backup at {source}")
    if source == target:
        fail(f"{source} is the database itself")
    revision = _inspect(source)
    scripts = ScriptDirectory.from_config(runner.alembic_config(url))
    if revision not in {script.revision for script in scripts.walk_revisions()}:
        fail(
            f"{source} is at schema revision {revision}, which this version of tokendesk "
            "does not know: restore it with the version that wrote it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with held(target, exclusive=True):
            kept = None
            if target.exists():
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
                kept = target.with_name(f"{target.name}.before-restore-{stamp}")
                _copy(target, kept)
                _self_contained(kept)
            _copy(source, target)
    except DatabaseBusy:
        fail(
            f"a server is running on {target} (it holds {lock_path(target)}); stop every "
            "server on this database, then restore"
        )
    except (sqlite3.Error, OSError) as exc:
        fail(f"restore failed: {exc}")
    if kept is not None:
        typer.echo(f"kept the database it replaced as {kept}")
    typer.echo(f"restored {source} to {target} (schema revision {revision})")
    if revision != scripts.get_current_head():
        typer.echo("the backup's schema is behind this version: run `tokendesk db upgrade`")
    typer.echo("check it with `tokendesk doctor` before starting the servers")
