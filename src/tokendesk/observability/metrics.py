"""The process's Prometheus metrics: one registry per runtime, every family named here.

Names follow Prometheus' conventions (``tokendesk_..._total`` for counters,
``_seconds`` for durations) and every label takes values from a fixed set: models
from the configuration (anything else is ``unknown``), endpoints from the gateway's
APIs, outcomes and kinds from the tuples below. No label ever names a user or a key.

The gateway's hot path counts through :meth:`Metrics.call`, :meth:`Metrics.tokens`
and the like, which keep each label set's child so a count is a dict lookup and
an increment. Values that need the database (requests pending, holds open) are
read when Prometheus scrapes (:mod:`tokendesk.observability.scrape`), never per request.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from tokendesk import __version__
from tokendesk.gateway.model_config import APIS

# What became of a gateway call, each counted once:
# ok             answered and settled with its usage
# cut            a streamed reply that ended early (the client left, the upstream failed
#                mid-stream): settled with what was delivered
# upstream_error the upstream failed or answered 5xx; the hold released untouched
# upstream_refused the upstream answered 4xx (the call's own fault, usually); released
# refused_quota  the balance did not cover the call (429 insufficient_quota)
# rate_limited   too many calls of the member at once (429 rate_limit_exceeded)
# invalid        a body, model or parameter refused (400/404/422), nothing held
# unauthorized   no valid credentials, or a caller the credentials cannot name (401/403)
# unavailable    the database refused the hold (503: read-only, disk full), nothing held
OUTCOMES = (
    "ok",
    "cut",
    "upstream_error",
    "upstream_refused",
    "refused_quota",
    "rate_limited",
    "invalid",
    "unauthorized",
    "unavailable",
)
# Where a call's tokens went: ``held`` when taken, then each hold ``settled`` (its
# tokens given back and the call ``charged``, weighted) or ``released`` untouched;
# ``prompt`` and ``completion`` are the unweighted tokens settled calls were billed for,
# ``cached`` the part of the prompt the upstream's cache served, ``reasoning`` the part
# of the completion spent reasoning.
TOKEN_KINDS = (
    "held",
    "settled",
    "released",
    "charged",
    "prompt",
    "completion",
    "cached",
    "reasoning",
)
# How token requests are decided. A new way of deciding adds its name here and calls
# :func:`tokendesk.observability.counted_decisions` with it.
DECISION_KINDS = ("manual", "bulk", "rule")
DECISION_STATUSES = ("approved", "rejected")
# The gateway's endpoints, by path; anything else under /v1 is "other".
ENDPOINT_PATHS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
    "/v1/messages": "messages",
    "/v1/completions": "completions",
}
ENDPOINTS = (*APIS, "other")
UNKNOWN_MODEL = "unknown"
USAGE_OUTCOMES = ("recorded", "replayed", "failed")
# What became of one notification delivery attempt: sent; retry (failed, tried again
# later); failed (given up); skipped (nothing will deliver it: no SMTP host, a removed
# webhook, a deactivated recipient).
NOTIFICATION_CHANNELS = ("email", "webhook")
NOTIFICATION_OUTCOMES = ("sent", "retry", "failed", "skipped")

# Seconds tokendesk adds before an upstream sees a call: sub-millisecond when healthy.
ADDED_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
# Seconds until a streamed reply's first words: a model's own pace, up to its timeout.
FIRST_TOKEN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Counters(Collector):
    """A counter family kept as plain numbers by label values.

    Updated on the event loop only (every request, settlement and tick runs there),
    so a count is one dict update: no lock, no call into the client library, which
    would cost a gateway call several function calls per count. Read as Prometheus
    collects, on the loop too.
    """

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labels)]

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        return [family]


class Buckets(Collector):
    """A histogram family kept as plain numbers (as :class:`Counters`): per label values,
    a count per bucket, then the count above the last bound, then the sum."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...] = (),
        *,
        bounds: tuple[float, ...],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.bounds = bounds
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0] * (len(self.bounds) + 1) + [0.0]
        # A value on a bound belongs to that bound's bucket (``le``).
        series[bisect_left(self.bounds, value)] += 1
        series[-1] += value

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labels)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, series in list(self.series.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*self.bounds, float("inf")), series, strict=False):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric(labels, buckets, sum_value=series[-1])
        return [family]


class _Info(Collector):
    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("tokendesk_info", "The running version.", labels=["version"])
        family.add_metric([__version__], 1)
        return [family]


class Metrics:
    """Every metric family of one process, on a registry of its own (so a test, a
    benchmark or a second app in one process counts apart)."""

    def __init__(self, *, models: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.models = frozenset(models)
        self.gateway_calls = Counters(
            "tokendesk_gateway_calls",
            "Gateway calls by model, endpoint and outcome.",
            ("model", "endpoint", "outcome"),
        )
        self.added_latency = Buckets(
            "tokendesk_gateway_added_latency_seconds",
            "Time from a call's arrival until the upstream is sent it: what tokendesk adds.",
            ("endpoint",),
            bounds=ADDED_LATENCY_BUCKETS,
        )
        self.first_token = Buckets(
            "tokendesk_gateway_time_to_first_token_seconds",
            "Time from a streamed call's arrival until its first output is relayed.",
            ("model", "endpoint"),
            bounds=FIRST_TOKEN_BUCKETS,
        )
        self.gateway_tokens = Counters(
            "tokendesk_gateway_tokens",
            "Gateway tokens by model and kind: held, settled, released, charged "
            "(weighted), prompt, completion, cached and reasoning (unweighted).",
            ("model", "kind"),
        )
        self.settlement_batch = Buckets(
            "tokendesk_settlement_batch_size",
            "Gateway settlements committed per transaction.",
            bounds=BATCH_BUCKETS,
        )
        self.settlement_lag = Buckets(
            "tokendesk_settlement_lag_seconds",
            "Time from a batch's oldest settlement being queued until it is committed.",
            bounds=LAG_BUCKETS,
        )
        self.settlement_failures = Counters(
            "tokendesk_settlement_failures",
            "Settlements that failed even alone (logged; their holds expire).",
        )
        self.usage_events = Counters(
            "tokendesk_usage_ingest_events",
            "Usage events reported through POST /api/v1/usage: recorded, replayed (an "
            "event id seen before, charged once) or failed.",
            ("outcome",),
        )
        self.decisions = Counters(
            "tokendesk_token_request_decisions",
            "Token requests decided, by kind of decision and status.",
            ("kind", "status"),
        )
        self.scheduler_runs = Counters(
            "tokendesk_scheduler_runs", "Scheduler ticks, by outcome.", ("outcome",)
        )
        self.scheduler_resets = Counters(
            "tokendesk_scheduler_balances_reset",
            "Balances the scheduler rolled over into a new period.",
        )
        self.scheduler_expired = Counters(
            "tokendesk_scheduler_holds_expired",
            "Holds the scheduler released because they outlived their time to live.",
        )
        self.notification_deliveries = Counters(
            "tokendesk_notification_deliveries",
            "Notification delivery attempts on this instance, by channel and outcome: sent, "
            "retry (tried again later), failed (given up) or skipped (nothing will send it).",
            ("channel", "outcome"),
        )
        self.http_requests = Counters(
            "tokendesk_http_requests",
            "HTTP requests by route template, method and status.",
            ("route", "method", "status"),
        )
        self.http_duration = Buckets(
            "tokendesk_http_request_duration_seconds",
            "HTTP request duration by route template (a stream: until it ends).",
            ("route",),
            bounds=REQUEST_BUCKETS,
        )
        # Every series that should read 0 before anything happened, rather than be absent.
        for outcome in USAGE_OUTCOMES:
            self.usage_events.inc((outcome,), 0)
        for kind in DECISION_KINDS:
            for status in DECISION_STATUSES:
                self.decisions.inc((kind, status), 0)
        for outcome in ("ok", "failed"):
            self.scheduler_runs.inc((outcome,), 0)
        for channel in NOTIFICATION_CHANNELS:
            for outcome in NOTIFICATION_OUTCOMES:
                self.notification_deliveries.inc((channel, outcome), 0)
        for name in ("settlement_failures", "scheduler_resets", "scheduler_expired"):
            getattr(self, name).inc((), 0)
        for family in vars(self).values():
            if isinstance(family, Counters | Buckets):
                self.registry.register(family)
        self.registry.register(_Info())

    def model_label(self, name: str | None) -> str:
        return name if name is not None and name in self.models else UNKNOWN_MODEL

    # -- the gateway -----------------------------------------------------------------

    def call(self, model: str | None, endpoint: str, outcome: str) -> None:
        """One gateway call ended with ``outcome`` (one of OUTCOMES)."""
        model = model if model in self.models else UNKNOWN_MODEL
        values = self.gateway_calls.values
        key = (model, endpoint, outcome)
        values[key] = values.get(key, 0) + 1

    def tokens(self, model: str, kind: str, amount: int) -> None:
        if amount > 0:
            self.gateway_tokens.inc((self.model_label(model), kind), amount)

    def settled_call(
        self, model: str, endpoint: str, outcome: str, kinds: Iterable[tuple[str, int]]
    ) -> None:
        """A call settled with ``outcome``: counted, with its tokens of each kind."""
        model = model if model in self.models else UNKNOWN_MODEL
        self.call(model, endpoint, outcome)
        values = self.gateway_tokens.values
        for kind, amount in kinds:
            if amount > 0:
                key = (model, kind)
                values[key] = values.get(key, 0) + amount

    def added(self, endpoint: str, seconds: float) -> None:
        self.added_latency.observe((endpoint,), seconds)

    def first_output(self, model: str, endpoint: str, seconds: float) -> None:
        self.first_token.observe((self.model_label(model), endpoint), seconds)

    def settled_batch(self, size: int, *, oldest_at: float) -> None:
        self.settlement_batch.observe((), size)
        self.settlement_lag.observe((), max(0.0, time.monotonic() - oldest_at))

    # -- elsewhere -------------------------------------------------------------------

    def decided(self, kind: str, status: str, count: int) -> None:
        if count > 0:
            self.decisions.inc((kind, status), count)

    def usage(self, outcome: str, count: int = 1) -> None:
        if count > 0:
            self.usage_events.inc((outcome,), count)

    def delivered(self, channel: str, outcome: str, count: int = 1) -> None:
        if count > 0:
            self.notification_deliveries.inc((channel, outcome), count)

    def scheduler_tick(self, *, ok: bool, reset: int = 0, expired: int = 0) -> None:
        self.scheduler_runs.inc(("ok" if ok else "failed",))
        if reset:
            self.scheduler_resets.inc((), reset)
        if expired:
            self.scheduler_expired.inc((), expired)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, str(status))
        values = self.http_requests.values
        values[key] = values.get(key, 0) + 1
        self.http_duration.observe((route,), seconds)

    def add_collector(self, collector: Collector) -> None:
        """A collector read at every scrape (for values kept elsewhere, read in place)."""
        self.registry.register(collector)


def endpoint_of(path: str, root_path: str = "") -> str:
    """The gateway endpoint a request path names (ENDPOINTS), without the mount's root."""
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    return ENDPOINT_PATHS.get(path, "other")
