"""Readiness: the database answers, its schema is at the head, the event bus listens.

The database checks together are bounded in time: a database that hangs makes
the instance not ready within the bound instead of holding the probe.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text

from tokendesk.health.schemas import ReadyOut
from tokendesk.runtime import Runtime

log = logging.getLogger(__name__)

CHECK_SECONDS = 2.0
OK = "ok"
# The schema cannot be read from a database that does not answer: not a failure of its own.
NOT_CHECKED = "not checked: the database did not answer"


async def _database_and_schema(runtime: Runtime, checks: dict[str, str]) -> None:
    # The read engine: what every page and the gateway's lookups need first.
    async with runtime.database.read_engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
        checks["database"] = OK
        checks["schema"] = "unreadable: no alembic_version"
        result = await connection.execute(text("SELECT version_num FROM alembic_version"))
        found = sorted(str(v) for v in result.scalars())
    head = runtime.schema_head
    checks["schema"] = OK if found == [head] else f"at {', '.join(found) or 'none'}, head is {head}"


async def readiness(runtime: Runtime) -> ReadyOut:
    """Each check's result; the unauthenticated probe learns no more than a reason's kind."""
    checks = {
        "database": f"no answer within {CHECK_SECONDS:g}s",
        "schema": NOT_CHECKED,
        "events": OK if runtime.bus.listening else "not listening",
    }
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            await _database_and_schema(runtime, checks)
    except TimeoutError:
        if checks["database"] == OK:
            checks["schema"] = f"no answer within {CHECK_SECONDS:g}s"
    except Exception as exc:
        log.warning("readiness: %s", exc)
        if checks["database"] != OK:
            checks["database"] = f"unreachable ({type(exc).__name__})"
    if runtime.stopping.is_set():
        # Draining: the balancer should send new calls to the other instances.
        checks["serving"] = "shutting down"
    failing = [name for name, result in checks.items() if result not in (OK, NOT_CHECKED)]
    return ReadyOut(status="not ready" if failing else "ready", checks=checks, failing=failing)
