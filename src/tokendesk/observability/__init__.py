"""Metrics (Prometheus, ``/metrics``) and the request log: what an operator watches.

``metrics.py`` names every family, ``scrape.py`` reads what is kept elsewhere when
Prometheus scrapes, ``routes.py`` serves ``/metrics`` (on the main port or a port of
its own, optionally behind a token), ``requests.py`` gives each request an id and
logs one line for it, ``logs.py`` formats log lines as text or JSON.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from tokendesk.db import after_commit


def counted_decisions(session: AsyncSession, *, kind: str, status: str, count: int) -> None:
    """Count ``count`` token requests decided in ``session``'s transaction, once it has
    committed (never on rollback); ``kind`` is one of ``metrics.DECISION_KINDS``. A
    transaction outside a server (the CLI) has no metrics and counts nothing."""
    metrics = session.info.get("metrics")
    if metrics is not None and count > 0:
        after_commit(session, lambda: metrics.decided(kind, status, count))
