"""SQLite refusing to write: a read-only file, a full disk, a failing device, a lock held
past the busy timeout. Each is the operator's to fix, not a bug, so the unit of work
turns it into one error (:class:`StorageRefused`, 503) that every caller renders as it
renders any other: the REST API's JSON, the gateway's dialect. The transaction was
rolled back, so nothing of it is written; read transactions keep working."""

from __future__ import annotations

import sqlite3

from tokendesk.errors import AppError

# Primary result codes (the low byte of an extended code such as SQLITE_IOERR_WRITE).
CAUSES = {
    sqlite3.SQLITE_READONLY: "its file is read-only",
    sqlite3.SQLITE_FULL: "the disk is full",
    sqlite3.SQLITE_IOERR: "the disk reported an I/O error",
    sqlite3.SQLITE_CANTOPEN: "its file cannot be opened",
    sqlite3.SQLITE_BUSY: "another process held its lock past the busy timeout",
}
# What a client is told to wait before trying again: an operator has to act first,
# except for a lock, which its holder (a backup, a migration) lets go by itself.
RETRY_AFTER_SECONDS = 30
BUSY_RETRY_AFTER_SECONDS = 5


class StorageRefused(AppError):
    """The database refused the transaction; nothing of it was written."""

    status_code = 503

    def __init__(self, cause: str, *, detail: str = "", busy: bool = False) -> None:
        then = "in a moment" if busy else "once the operator has fixed it"
        super().__init__(
            f"the database cannot be written: {cause}. Nothing was changed; reading still "
            f"works. Try again {then}."
        )
        self.cause = cause
        # SQLite's own words, for the operator's log (never the statement: it may be huge).
        self.detail = detail
        self.retry_after = BUSY_RETRY_AFTER_SECONDS if busy else RETRY_AFTER_SECONDS


def _sqlite_error(exc: BaseException) -> sqlite3.Error | None:
    """The sqlite3 error behind ``exc`` (SQLAlchemy keeps it as ``orig``, aiosqlite as a cause)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlite3.Error) and isinstance(
            getattr(current, "sqlite_errorcode", None), int
        ):
            return current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None


def refusal(exc: BaseException, *, writing: bool = True) -> StorageRefused | None:
    """The refusal ``exc`` is, or None when it is anything else (a constraint, a bug).

    Outside a write transaction a read-only refusal is a bug, not the file: read
    connections run ``PRAGMA query_only``, so a write there fails the same way, and
    must fail loudly as what it is."""
    error = _sqlite_error(exc)
    if error is None:
        return None
    code = error.sqlite_errorcode & 0xFF
    if code == sqlite3.SQLITE_READONLY and not writing:
        return None
    cause = CAUSES.get(code)
    if cause is None:
        return None
    return StorageRefused(cause, detail=str(error), busy=code == sqlite3.SQLITE_BUSY)
