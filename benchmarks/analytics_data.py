"""The analytics benchmark's data: an organization set up through the services, and a
generator of usage events with the rollups they imply (computed from the very events).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import update

from tokendesk.accounts.models import Role, User
from tokendesk.accounts.organizations import create_organization
from tokendesk.accounts.teams import add_team_owner, create_team
from tokendesk.accounts.users import create_user
from tokendesk.db import Database
from tokendesk.ledger.periods import local_midnight, period_bounds
from tokendesk.metering.models import ALL_MODELS

TIMEZONE = "Europe/Berlin"
ADMIN_EMAIL = "admin@bench.example"
# (model, share of calls, mean prompt tokens, mean completion tokens)
MODELS = [
    ("gpt-4o", 0.34, 1400, 450),
    ("gpt-4o-mini", 0.26, 900, 300),
    ("claude-sonnet", 0.18, 1800, 600),
    ("claude-haiku", 0.10, 700, 250),
    ("llama-3-70b", 0.08, 1100, 400),
    ("mistral-large", 0.04, 1200, 400),
]
ALLOCATION = 2_000_000
# (endpoint, share of calls in percent); None: usage reported through the usage API.
ENDPOINTS = [
    ("chat", 55),
    ("responses", 15),
    ("messages", 12),
    ("embeddings", 12),
    ("completions", 3),
    (None, 3),
]
# Each of 100 buckets' endpoint: an event's bucket comes from its number, not from the
# random generator, so the events and every other rollup are those of earlier runs.
_BUCKETS = [index for index, (_, share) in enumerate(ENDPOINTS) for _ in range(share)]
SUMS = 6  # prompt, completion, cached, reasoning, total, calls


@dataclass
class Load:
    """Everything the generator produced, ready to write."""

    events: int = 0
    users_with_usage: int = 0
    team_daily: dict[tuple[date, int, str], list[int]] = field(default_factory=dict)
    model_daily: dict[tuple[date, str], list[int]] = field(default_factory=dict)
    team_endpoint_daily: dict[tuple[date, int, str, str], list[int]] = field(default_factory=dict)
    endpoint_daily: dict[tuple[date, str, str], list[int]] = field(default_factory=dict)
    series: int = 0
    cumulative: int = 0
    used_this_period: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class World:
    org_id: int
    period_start: datetime
    period_end: datetime
    users: list[tuple[int, int]]  # (user id, team id)
    admin_id: int
    owner_id: int
    owner_team: int


# ---------------------------------------------------------------- set-up through the services


async def create_world(url: str, *, users: int, teams: int, now: datetime) -> World:
    database = Database(url)
    try:
        async with database.transaction() as s:
            org = await create_organization(
                s,
                name="Bench Co",
                default_allocation=ALLOCATION,
                max_request=10_000_000,
                timezone=TIMEZONE,
                reset_day=1,
            )
            team_rows = [
                await create_team(s, organization_id=org.id, name=f"Team {n:03d}")
                for n in range(teams)
            ]
            admin = await create_user(
                s,
                organization_id=org.id,
                email=ADMIN_EMAIL,
                name="Bench Admin",
                role=Role.ORG_ADMIN,
                now=now,
            )
            people: list[tuple[int, int]] = []
            for n in range(users):
                team = team_rows[n % teams]
                user = await create_user(
                    s,
                    organization_id=org.id,
                    email=f"user{n:05d}@bench.example",
                    name=f"User {n:05d}",
                    team_id=team.id,
                    now=now,
                )
                people.append((user.id, team.id))
            owner_user = await s.get(User, people[0][0])
            assert owner_user is not None
            await add_team_owner(s, team=team_rows[0], user=owner_user)
            # Everyone has been here longer than the 90 days of usage about to be loaded.
            await s.execute(
                update(User)
                .where(User.organization_id == org.id)
                .values(created_at=now - timedelta(days=365))
            )
            start, end = period_bounds(now, reset_day=1, timezone=TIMEZONE)
            return World(org.id, start, end, people, admin.id, people[0][0], team_rows[0].id)
    finally:
        await database.dispose()


# ---------------------------------------------------------------- the generator


@dataclass(frozen=True)
class Clock:
    """Event times as integer UTC seconds: cheap to generate, converted once per backend."""

    first: int
    span: int
    # Each local day of the range with the UTC second its midnight falls on.
    days: list[date]
    starts: list[int]

    @classmethod
    def over(cls, now: datetime, days: int) -> Clock:
        tz = ZoneInfo(TIMEZONE)
        last = int(now.timestamp())
        first = last - days * 86_400
        day = datetime.fromtimestamp(first, tz).date()
        local_days, starts = [], []
        while True:
            midnight = int(local_midnight(day, tz).timestamp())
            if midnight > last:
                break
            local_days.append(day)
            starts.append(midnight)
            day += timedelta(days=1)
        return cls(first, last - first, local_days, starts)


def generate(
    world: World, *, events: int, clock: Clock, seed: int = 7
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], Load]]:
    """Yield (events, series and running-total rows, load so far) per user.

    Users differ a lot (a heavy tail of power users), models follow fixed shares,
    and every event lies in the clock's range. Event times are UTC seconds.
    """
    rng = random.Random(seed)
    names = [m[0] for m in MODELS]
    # 1,000 slots shared out by the models' shares: one random number picks a model.
    slots = [i for i, m in enumerate(MODELS) for _ in range(round(m[1] * 1000))]
    means = [(m[2], m[3]) for m in MODELS]
    width = len(MODELS)
    activity = [rng.lognormvariate(0, 0.8) for _ in world.users]
    scale = events / sum(activity)
    counts = [int(a * scale) for a in activity]
    counts[0] += events - sum(counts)
    period_start = int(world.period_start.timestamp())
    starts = clock.starts
    load = Load()
    event_no = 0
    series_id = 0
    for (user_id, team_id), count in zip(world.users, counts, strict=True):
        span, first, draw = clock.span, clock.first, rng.random
        times = sorted(int(draw() * span) + first for _ in range(count))
        cells = [0] * (len(clock.days) * width * SUMS)
        by_endpoint: dict[tuple[int, int, int], list[int]] = {}
        rows: list[tuple[Any, ...]] = []
        used_period = 0
        day = 0
        for when in times:
            while day + 1 < len(starts) and when >= starts[day + 1]:
                day += 1
            model = slots[int(rng.random() * len(slots))]
            mean_prompt, mean_completion = means[model]
            prompt = int(mean_prompt * (0.2 + 1.6 * rng.random()))
            completion = int(mean_completion * (0.2 + 1.6 * rng.random()))
            total = prompt + completion
            if when >= period_start:
                used_period += total
            event_no += 1
            bucket = event_no * 2_654_435_761 % 100
            endpoint = _BUCKETS[bucket]
            # A third of the conversational calls hit the prompt cache for half the prompt;
            # the Responses API's calls spend a third of their output reasoning.
            cached = prompt // 2 if endpoint in (0, 1, 2) and bucket % 3 == 0 else 0
            reasoning = completion // 3 if endpoint == 1 else 0
            rows.append(
                (event_no, f"b{event_no:09d}", user_id, team_id, names[model], prompt,
                 completion, total, when, ALLOCATION - used_period, clock.days[day],
                 ENDPOINTS[endpoint][0], cached, reasoning)
            )  # fmt: skip
            at = (day * width + model) * SUMS
            sums = (prompt, completion, cached, reasoning, total, 1)
            for i in range(SUMS):
                cells[at + i] += sums[i]
            cell = by_endpoint.setdefault((day, model, endpoint), [0] * SUMS)
            for i in range(SUMS):
                cell[i] += sums[i]
        load.events += count
        load.users_with_usage += bool(count)
        load.used_this_period[user_id] = used_period
        per_series: dict[str, list[tuple[date, int, int]]] = defaultdict(list)
        for day_index, local in enumerate(clock.days):
            all_tokens = all_calls = 0
            for model in range(width):
                at = (day_index * width + model) * SUMS
                calls = cells[at + 5]
                if not calls:
                    continue
                sums = cells[at : at + SUMS]
                per_series[names[model]].append((local, sums[4], calls))
                all_tokens += sums[4]
                all_calls += calls
                team_cell = load.team_daily.setdefault((local, team_id, names[model]), [0] * SUMS)
                model_cell = load.model_daily.setdefault((local, names[model]), [0] * SUMS)
                for i in range(SUMS):
                    team_cell[i] += sums[i]
                    model_cell[i] += sums[i]
            if all_calls:
                per_series[ALL_MODELS].append((local, all_tokens, all_calls))
        for (day_index, model, endpoint), sums in by_endpoint.items():
            local, name = clock.days[day_index], ENDPOINTS[endpoint][0] or ""
            team_cell = load.team_endpoint_daily.setdefault(
                (local, team_id, names[model], name), [0] * SUMS
            )
            org_cell = load.endpoint_daily.setdefault((local, names[model], name), [0] * SUMS)
            for i in range(SUMS):
                team_cell[i] += sums[i]
                org_cell[i] += sums[i]
        running: list[tuple[Any, ...]] = []
        for key in sorted(per_series):
            series_id += 1
            days = per_series[key]
            tokens = calls = 0
            for local, day_tokens, day_calls in days:
                tokens += day_tokens
                calls += day_calls
                running.append(("row", series_id, local, tokens, calls))
            # (first day, last day, totals): the series row carries its last running total.
            running.append(
                ("series", series_id, user_id, team_id, key, days[0][0], days[-1][0], tokens, calls)
            )
            load.cumulative += len(days)
        load.series = series_id
        yield rows, running, load


def token_requests(
    world: World, *, count: int, days: int, now: datetime, seed: int = 11
) -> tuple[list[tuple[Any, ...]], dict[int, int]]:
    """(request rows, tokens granted this period per user): decided ones mostly, a few pending."""
    rng = random.Random(seed)
    first = now - timedelta(days=days)
    rows: list[tuple[Any, ...]] = []
    granted: dict[int, int] = defaultdict(int)
    pending: set[int] = set()
    for n in range(count):
        user_id, team_id = world.users[rng.randrange(len(world.users))]
        created = first + timedelta(seconds=rng.random() * days * 86_400)
        amount = rng.choice([100_000, 250_000, 500_000, 1_000_000])
        r = rng.random()
        recent = now - created < timedelta(days=2)
        if recent and r < 0.3 and user_id not in pending:
            pending.add(user_id)
            rows.append((n + 1, user_id, team_id, amount, None, "pending", created, None))
            continue
        decided = created + timedelta(minutes=rng.expovariate(1 / 240))
        decided = min(decided, now)
        if r < 0.75:
            approved = amount if rng.random() < 0.8 else amount // 2
            rows.append((n + 1, user_id, team_id, amount, approved, "approved", created, decided))
            if created >= world.period_start:
                granted[user_id] += approved
        elif r < 0.93:
            rows.append((n + 1, user_id, team_id, amount, None, "rejected", created, decided))
        else:
            rows.append((n + 1, user_id, team_id, amount, None, "cancelled", created, decided))
    return rows, granted
