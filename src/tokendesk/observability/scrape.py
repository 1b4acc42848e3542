"""What ``/metrics`` reads when it is scraped: values kept elsewhere, read in place.

Two kinds. Values the process keeps (open event streams, calls in progress, the
settler's queue, overruns, the database pool) are read by :class:`RuntimeCollector`
as Prometheus collects. Values that need the database (requests pending per
organization, holds open) are read by a few cheap, bounded queries that run
before each exposition (:func:`exposition`), never on a request's path; each is a
:data:`Probe`, and another domain adds its own with :meth:`Probes.add` (the
notification outbox's depth, for one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import Pool

from tokendesk.db import utcnow
from tokendesk.ledger.models import Reservation, ReservationStatus
from tokendesk.token_requests.models import RequestStatus, TokenRequest

if TYPE_CHECKING:
    from tokendesk.runtime import Runtime

log = logging.getLogger(__name__)

# A scrape waits this long for the database; past it the database's figures are left
# out and tokendesk_scrape_database_up says 0.
SCRAPE_DATABASE_SECONDS = 2.0
# Organizations listed in tokendesk_token_requests_pending, those with most pending first.
MAX_ORGANIZATIONS = 500

Probe = Callable[[AsyncSession], Awaitable[Iterable[Metric]]]


async def pending_by_organization(session: AsyncSession) -> Iterable[Metric]:
    """One row per organization with requests pending (the pending index's partial scan)."""
    count = func.count().label("n")
    rows = await session.execute(
        select(TokenRequest.organization_id, count)
        .where(TokenRequest.status == RequestStatus.PENDING.value)
        .group_by(TokenRequest.organization_id)
        .order_by(count.desc())
        .limit(MAX_ORGANIZATIONS)
    )
    family = GaugeMetricFamily(
        "tokendesk_token_requests_pending",
        "Token requests waiting for a decision, by organization id.",
        labels=["organization_id"],
    )
    for organization_id, n in rows:
        family.add_metric([str(organization_id)], n)
    return [family]


async def holds_open(session: AsyncSession) -> Iterable[Metric]:
    """Holds not yet settled or released, in the whole database (every instance's)."""
    now = utcnow()
    held = Reservation.status == ReservationStatus.HELD.value
    row = (
        await session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(Reservation.amount), 0),
                func.count().filter(Reservation.expires_at <= now),
            ).where(held)
        )
    ).one()
    opened = GaugeMetricFamily("tokendesk_holds_open", "Holds open, on every instance.")
    opened.add_metric([], row[0])
    tokens = GaugeMetricFamily("tokendesk_holds_open_tokens", "Tokens the open holds hold.")
    tokens.add_metric([], row[1])
    overdue = GaugeMetricFamily(
        "tokendesk_holds_overdue",
        "Open holds past their time to live, waiting for the scheduler to release them.",
    )
    overdue.add_metric([], row[2])
    return [opened, tokens, overdue]


class Probes(Collector):
    """The database's figures, read by :meth:`refresh` before an exposition and given
    to Prometheus as they were then."""

    def __init__(self) -> None:
        self.probes: list[Probe] = [pending_by_organization, holds_open]
        self._last: list[Metric] = []

    def add(self, probe: Probe) -> None:
        """Read ``probe`` at every scrape too: one cheap, bounded query (an indexed
        count), in the scrape's read transaction."""
        self.probes.append(probe)

    async def refresh(self, runtime: Runtime) -> None:
        found: list[Metric] = []
        up = GaugeMetricFamily(
            "tokendesk_scrape_database_up",
            f"1 when the scrape's database queries answered within {SCRAPE_DATABASE_SECONDS:g}s.",
        )
        try:
            async with (
                asyncio.timeout(SCRAPE_DATABASE_SECONDS),
                runtime.database.transaction(write=False) as session,
            ):
                for probe in self.probes:
                    found.extend(await probe(session))
        except Exception as exc:  # a scrape reports the database down; it never fails
            log.warning("metrics: the database's figures are missing (%s)", type(exc).__name__)
            up.add_metric([], 0)
            self._last = [up]
            return
        up.add_metric([], 1)
        self._last = [up, *found]

    def describe(self) -> Iterable[Metric]:
        return []  # what it yields is known only once the database has answered

    def collect(self) -> Iterator[Metric]:
        yield from self._last


class RuntimeCollector(Collector):
    """What the runtime keeps in memory, read as Prometheus collects."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def describe(self) -> Iterable[Metric]:
        return []  # registered while the runtime is being built: not collected until scraped

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        gateway = runtime.gateway
        yield _gauge(
            "tokendesk_event_streams_open",
            "Event streams (GET /events, the request page's) open on this instance.",
            runtime.event_streams.in_use,
        )
        yield _gauge(
            "tokendesk_gateway_calls_in_progress",
            "Gateway calls being served on this instance (a stream until it ends).",
            gateway.calls.in_use,
        )
        yield _gauge(
            "tokendesk_settlements_waiting",
            "Gateway settlements queued for the settler's next transaction.",
            gateway.settler.waiting,
        )
        overruns = gateway.overruns
        yield _counter(
            "tokendesk_gateway_overruns",
            "Calls charged more than they held (an upstream that ignored the budget).",
            overruns.calls,
        )
        yield _counter(
            "tokendesk_gateway_overrun_tokens",
            "Tokens charged beyond what the overrunning calls held.",
            overruns.tokens,
        )
        yield _counter(
            "tokendesk_gateway_unusable_usage",
            "Upstream usage reports not believed (the reply was counted instead).",
            overruns.unusable_usage,
        )
        pool = GaugeMetricFamily(
            "tokendesk_db_pool_connections",
            "Database pool connections by engine (write, read) and state (in_use, idle).",
            labels=["engine", "state"],
        )
        database = runtime.database
        engines = [("write", database.write_engine.pool)]
        if database.read_engine is not database.write_engine:
            engines.append(("read", database.read_engine.pool))
        for name, engine_pool in engines:
            in_use, idle = _pool_use(engine_pool)
            pool.add_metric([name, "in_use"], in_use)
            pool.add_metric([name, "idle"], idle)
        yield pool


def _pool_use(pool: Pool) -> tuple[int, int]:
    checkedout: Any = getattr(pool, "checkedout", None)
    checkedin: Any = getattr(pool, "checkedin", None)
    return (
        int(checkedout()) if callable(checkedout) else 0,
        int(checkedin()) if callable(checkedin) else 0,
    )


def _gauge(name: str, documentation: str, value: float) -> Metric:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def _counter(name: str, documentation: str, value: float) -> Metric:
    family = CounterMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


async def exposition(runtime: Runtime) -> bytes:
    """The text Prometheus reads: the database's figures read afresh, then every family."""
    await runtime.probes.refresh(runtime)
    return generate_latest(runtime.metrics.registry)
