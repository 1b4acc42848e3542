"""Telling a database that cannot be reached from one that refused a statement.

While PostgreSQL restarts (or the network to it is down) every statement fails,
in a handful of ways depending on the moment: the pool cannot connect, the server
is starting up or shutting down, a connection it held was cut mid-statement. Each
of those means "try again shortly": a request answers 503 with a ``Retry-After``
hint (:mod:`tokendesk.unavailable`), and background work keeps what it was doing
and tries again. Anything else (a constraint, a lock timeout, a bug) is not an
outage and goes on as the error it is.
"""

from __future__ import annotations

import errno
import logging
from types import TracebackType

import asyncpg
from sqlalchemy import exc as sa_exc

# What a refused caller is told to wait: about as long as a PostgreSQL restart takes.
RETRY_AFTER_SECONDS = 2
MESSAGE = "the database is unavailable; try again shortly"

_CONNECTION_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.ETIMEDOUT,
        errno.ENOTCONN,
    }
)
_SERVER_GOING = (
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was lost
    asyncpg.AdminShutdownError,  # 57P01: the server is shutting down (a restart)
    asyncpg.CrashShutdownError,  # 57P02: another backend crashed, every session ends
    asyncpg.CannotConnectNowError,  # 57P03: starting up, or in recovery
    # The driver's protocol lost its place ("cannot switch to state ...; another
    # operation is in progress"): what a connection cut mid-statement leaves behind.
    # The connection is done for; the pool's ping replaces it, and a retry succeeds.
    asyncpg.InternalClientError,
)
# The drivers whose own timeouts (connecting, the pool's wait) mean an outage; a
# TimeoutError raised anywhere else (an upstream, a client) is not the database's.
_DRIVERS = ("asyncpg", "sqlalchemy")


def _raised_in_driver(traceback: TracebackType | None) -> bool:
    while traceback is not None:
        module = str(traceback.tb_frame.f_globals.get("__name__", ""))
        if module.split(".", 1)[0] in _DRIVERS:
            return True
        traceback = traceback.tb_next
    return False


def _is_outage_alone(error: BaseException) -> bool:
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, sa_exc.TimeoutError):  # the pool's wait for a connection
        return True
    if isinstance(error, _SERVER_GOING):
        return True
    if isinstance(error, asyncpg.InterfaceError):
        return "connection is closed" in str(error) or "connection was closed" in str(error)
    if isinstance(error, TimeoutError):
        return _raised_in_driver(error.__traceback__)
    if isinstance(error, ConnectionError):
        return True
    return isinstance(error, OSError) and error.errno in _CONNECTION_ERRNOS


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) says the database cannot be reached now."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if _is_outage_alone(current):
            return True
        for inner in (current.__cause__, current.__context__, getattr(current, "orig", None)):
            if isinstance(inner, BaseException):
                pending.append(inner)
    return False


def log_failure(log: logging.Logger, error: BaseException, message: str, *args: object) -> None:
    """Log the failure of work that is tried again (a background task's tick): one
    warning line when the database is out of reach, which is no bug and lasts as long
    as it lasts, and the whole traceback for anything else."""
    if is_outage(error):
        log.warning(message + " (the database is unavailable: %s)", *args, type(error).__name__)
    else:
        log.error(message, *args, exc_info=error)
