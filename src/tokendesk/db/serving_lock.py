"""The lock a server holds on its SQLite database, so a restore can tell it is in use.

Every process that serves a SQLite database (``tokendesk serve``, or uvicorn on
``tokendesk.app:create_app``) holds a shared ``flock`` on ``<database>.lock``
for as long as it runs; ``tokendesk restore`` takes it exclusively, and so
refuses while any server holds it and keeps a server from starting while it
restores. The kernel drops an ``flock`` when its process ends however it ends
(SIGKILL included), so a crashed server never leaves a stale lock; a lock file
left behind holds nothing. A PID file would be neither: a reused PID looks alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url


class DatabaseBusy(RuntimeError):
    """Another process holds the database's lock in a way that excludes this one."""


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for PostgreSQL or an in-memory database."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        return None
    name = parsed.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name).absolute()


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


@contextlib.contextmanager
def held(database: Path, *, exclusive: bool) -> Iterator[None]:
    """The database's lock, shared (a server) or exclusive (a restore), without
    waiting: raises :class:`DatabaseBusy` when the other kind is held."""
    fd = os.open(lock_path(database), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatabaseBusy(str(database)) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
