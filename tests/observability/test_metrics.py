"""GET /metrics after real gateway calls (the fake upstream, the demo model), decisions,
usage reports and holds: exact deltas, bounded labels, the token and the separate port."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.factories import World
from tests.fake_upstream import USAGE, RunningServer
from tests.gateway.conftest import Harness
from tests.observability.conftest import RefusingUpstream, Scrape, scrape
from tests.serving import serving
from tests.token_requests.support import submit
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.ledger import scheduler
from tokendesk.ledger import service as ledger
from tokendesk.observability.metrics import OUTCOMES, TOKEN_KINDS, Metrics
from tokendesk.runtime import Runtime

MESSAGES = [{"role": "user", "content": "Say hello"}]
CALLS = "tokendesk_gateway_calls_total"
TOKENS = "tokendesk_gateway_tokens_total"
TOKEN = "s3cret-metrics-token-0123456789"
# Every label any family may carry: none names a person or a key.
LABELS = {"model", "endpoint", "outcome", "kind", "status", "route", "method", "engine", "state"}
LABELS |= {"organization_id", "version", "le", "channel"}


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


def calls(s: Scrape, model: str, outcome: str, endpoint: str = "chat") -> float:
    return s.value(CALLS, model=model, endpoint=endpoint, outcome=outcome)


class TestGatewayCalls:
    async def test_each_outcome_counts_its_calls_exactly(
        self, harness: Harness, world: World
    ) -> None:
        http, alice = harness.http, world.alice.headers
        before = await scrape(http)
        for _ in range(2):
            r = await http.post("/v1/chat/completions", json=chat("fast"), headers=alice)
            assert r.status_code == 200
        r = await http.post("/v1/chat/completions", json=chat("error"), headers=alice)
        assert r.status_code == 500
        r = await http.post("/v1/chat/completions", json=chat("drop", stream=True), headers=alice)
        assert r.status_code == 200
        r = await http.post(
            "/v1/chat/completions", json=chat("fast", max_tokens=6000), headers=world.nora.headers
        )
        assert r.status_code == 429
        r = await http.post("/v1/chat/completions", json=chat("no-such-model"), headers=alice)
        assert r.status_code == 404
        r = await http.post("/v1/chat/completions", json=chat("fast"))
        assert r.status_code == 401
        r = await http.post("/v1/embeddings", json={"model": "fast", "input": "hi"}, headers=alice)
        assert r.status_code == 200
        await harness.settled()
        after = await scrape(http)

        def delta(model: str, outcome: str, endpoint: str = "chat") -> float:
            return calls(after, model, outcome, endpoint) - calls(before, model, outcome, endpoint)

        assert delta("fast", "ok") == 2
        assert delta("error", "upstream_error") == 1
        assert delta("drop", "cut") == 1
        assert delta("fast", "refused_quota") == 1
        assert delta("unknown", "invalid") == 1
        assert delta("unknown", "unauthorized") == 1
        assert delta("fast", "ok", "embeddings") == 1
        # Nothing else was counted.
        total = sum(after.samples[CALLS].values()) - sum(before.samples.get(CALLS, {}).values())
        assert total == 8

    async def test_an_upstream_refusal_is_told_from_an_upstream_failure(
        self, harness: Harness, world: World
    ) -> None:
        assert isinstance(harness.upstream, RefusingUpstream)
        before = await scrape(harness.http)
        harness.upstream.refuse_with = 400
        r = await harness.http.post(
            "/v1/chat/completions", json=chat("fast"), headers=world.alice.headers
        )
        assert r.status_code == 400
        harness.upstream.refuse_with = 503
        r = await harness.http.post(
            "/v1/chat/completions", json=chat("fast"), headers=world.alice.headers
        )
        assert r.status_code == 503
        after = await scrape(harness.http)
        for outcome in ("upstream_refused", "upstream_error"):
            assert calls(after, "fast", outcome) - calls(before, "fast", outcome) == 1
        assert calls(after, "fast", "ok") == calls(before, "fast", "ok")

    @pytest.mark.parametrize("harness", [{"gateway_calls_per_user": 1}], indirect=True)
    async def test_a_call_beyond_the_members_limit_counts_as_rate_limited(
        self, harness: Harness, world: World
    ) -> None:
        harness.upstream.slow_seconds = 0.2  # within the harness's upstream timeout
        before = await scrape(harness.http)
        slow = asyncio.create_task(
            harness.http.post(
                "/v1/chat/completions", json=chat("slow"), headers=world.alice.headers
            )
        )
        for _ in range(200):  # until the slow call holds the member's one place
            if harness.gateway.calls.in_use:
                break
            await asyncio.sleep(0.01)
        r = await harness.http.post(
            "/v1/chat/completions", json=chat("fast"), headers=world.alice.headers
        )
        assert r.status_code == 429
        assert (await slow).status_code == 200
        await harness.settled()
        after = await scrape(harness.http)
        assert calls(after, "fast", "rate_limited") - calls(before, "fast", "rate_limited") == 1
        assert calls(after, "slow", "ok") - calls(before, "slow", "ok") == 1

    async def test_tokens_held_settled_and_charged_add_up(
        self, harness: Harness, world: World
    ) -> None:
        http = harness.http
        before = await scrape(http)
        r = await http.post(
            "/v1/chat/completions", json=chat("heavy", max_tokens=50), headers=world.alice.headers
        )
        assert r.status_code == 200
        r = await http.post(
            "/v1/chat/completions", json=chat("error", max_tokens=50), headers=world.alice.headers
        )
        await harness.settled()
        after = await scrape(http)

        def delta(model: str, kind: str) -> float:
            return after.value(TOKENS, model=model, kind=kind) - before.value(
                TOKENS, model=model, kind=kind
            )

        held = delta("heavy", "held")
        assert held > 0
        assert delta("heavy", "settled") == held
        assert delta("heavy", "charged") == 60  # 24 reported, weight 2.5
        assert delta("heavy", "prompt") == USAGE["prompt_tokens"]
        assert delta("heavy", "completion") == USAGE["completion_tokens"]
        assert delta("heavy", "released") == 0
        assert delta("error", "released") == delta("error", "held") > 0
        assert delta("error", "charged") == 0

    async def test_latency_and_settlement_histograms_observe_each_call(
        self, harness: Harness, world: World
    ) -> None:
        http = harness.http
        before = await scrape(http)
        for _ in range(3):
            r = await http.post(
                "/v1/chat/completions", json=chat("fast"), headers=world.alice.headers
            )
            assert r.status_code == 200
        r = await http.post(
            "/v1/chat/completions",
            json=chat("fast", stream=True),
            headers=world.alice.headers,
        )
        assert r.status_code == 200
        await harness.settled()
        after = await scrape(http)

        def delta(name: str, **labels: str) -> float:
            return after.value(name, **labels) - before.value(name, **labels)

        assert delta("tokendesk_gateway_added_latency_seconds_count", endpoint="chat") == 4
        assert delta("tokendesk_gateway_added_latency_seconds_sum", endpoint="chat") > 0
        first = "tokendesk_gateway_time_to_first_token_seconds_count"
        assert delta(first, model="fast", endpoint="chat") == 1
        assert delta("tokendesk_settlement_batch_size_sum") == 4
        assert delta("tokendesk_settlement_batch_size_count") >= 1
        assert delta("tokendesk_settlement_lag_seconds_count") == delta(
            "tokendesk_settlement_batch_size_count"
        )
        route = "/v1/chat/completions"
        assert delta("tokendesk_http_requests_total", route=route, method="POST", status="200") == 4

    async def test_no_label_names_a_person_or_a_key(self, harness: Harness, world: World) -> None:
        await harness.http.post(
            "/v1/chat/completions", json=chat("fast"), headers=world.alice.headers
        )
        await harness.settled()
        s = await scrape(harness.http)
        assert s.label_names <= LABELS
        kinds = {dict(labels)["kind"] for labels in s.samples[TOKENS]}
        assert kinds <= set(TOKEN_KINDS)
        outcomes = {dict(labels)["outcome"] for labels in s.samples[CALLS]}
        assert outcomes <= set(OUTCOMES)
        assert world.alice.email not in s.text
        assert world.alice.key not in s.text

    async def test_a_model_label_is_only_ever_a_configured_model(self) -> None:
        metrics = Metrics(models=["fast"])
        metrics.call("fast", "chat", "ok")
        metrics.call("made-up-by-a-client", "chat", "ok")
        metrics.tokens("another", "held", 5)
        text = Scrape(_exposed(metrics))
        assert text.value(CALLS, model="unknown", endpoint="chat", outcome="ok") == 1
        assert "made-up" not in text.text and "another" not in text.text


def _exposed(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


@pytest.fixture
async def demo_app(
    database: Database, db_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    settings = Settings(database_url=db_url, demo=True, scheduler_enabled=False)
    app = create_app(settings, database=database)
    async with (
        serving(app) as runtime,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        yield http, runtime


class TestDemoModel:
    async def test_demo_calls_whole_streamed_and_cut_are_counted(
        self, database: Database, db_url: str, world: World
    ) -> None:
        settings = Settings(database_url=db_url, demo=True, scheduler_enabled=False)
        app = create_app(settings, database=database)
        async with RunningServer(app) as server, httpx.AsyncClient(base_url=server.url) as http:
            runtime: Runtime = app.state.runtime
            before = await scrape(http)
            r = await http.post(
                "/v1/chat/completions", json=chat("demo"), headers=world.alice.headers
            )
            assert r.status_code == 200
            r = await http.post(
                "/v1/chat/completions", json=chat("demo", stream=True), headers=world.alice.headers
            )
            assert r.status_code == 200 and "[DONE]" in r.text
            async with http.stream(
                "POST",
                "/v1/chat/completions",
                json=chat("demo", stream=True),
                headers=world.alice.headers,
            ) as stream:
                async for _ in stream.aiter_lines():
                    break  # the member stops the reply after its first line
            for _ in range(200):  # the server notices the client has gone on its next write
                after = await scrape(http)
                if calls(after, "demo", "cut") > calls(before, "demo", "cut"):
                    break
                await asyncio.sleep(0.02)
            await runtime.gateway.settler.drain()
            after = await scrape(http)
        assert calls(after, "demo", "ok") - calls(before, "demo", "ok") == 2
        assert calls(after, "demo", "cut") - calls(before, "demo", "cut") == 1
        first = "tokendesk_gateway_time_to_first_token_seconds_count"
        labels = {"model": "demo", "endpoint": "chat"}
        assert after.value(first, **labels) - before.value(first, **labels) == 2


class TestOutsideTheGateway:
    async def test_requests_pending_are_counted_per_organization_at_scrape_time(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        before = await scrape(harness.http)
        org = str(world.org_id)
        assert before.value("tokendesk_scrape_database_up") == 1
        await submit(database, world.alice)
        await submit(database, world.bob)
        after = await scrape(harness.http)
        pending = "tokendesk_token_requests_pending"
        assert (
            after.value(pending, organization_id=org) - before.value(pending, organization_id=org)
            == 2
        )

    async def test_decisions_are_counted_by_kind_once_committed(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        http = harness.http
        one = await submit(database, world.alice)
        two = await submit(database, world.bob)
        three = await submit(database, world.amy)
        before = await scrape(http)
        r = await http.post(
            f"/api/v1/token-requests/{one.id}/approve", headers=world.admin.headers, json={}
        )
        assert r.status_code == 200, r.text
        # Deciding it again fails and rolls back: not counted.
        r = await http.post(
            f"/api/v1/token-requests/{one.id}/approve", headers=world.admin.headers, json={}
        )
        assert r.status_code == 409
        r = await http.post(
            "/api/v1/token-requests/bulk",
            headers=world.admin.headers,
            json={"action": "reject", "ids": [two.id, three.id, one.id]},
        )
        assert r.status_code == 200, r.text
        after = await scrape(http)
        name = "tokendesk_token_request_decisions_total"

        def delta(kind: str, status: str) -> float:
            return after.value(name, kind=kind, status=status) - before.value(
                name, kind=kind, status=status
            )

        assert delta("manual", "approved") == 1
        assert delta("bulk", "rejected") == 2
        assert delta("manual", "rejected") == delta("bulk", "approved") == 0

    async def test_usage_reports_are_counted_recorded_replayed_and_failed(
        self, harness: Harness, world: World
    ) -> None:
        http = harness.http

        def event(event_id: str, email: str) -> dict[str, Any]:
            return {
                "event_id": event_id,
                "user_email": email,
                "model": "gpt-4o",
                "prompt_tokens": 10,
                "completion_tokens": 5,
            }

        before = await scrape(http)
        body = {"events": [event("m1", world.alice.email), event("m2", world.bob.email)]}
        assert (
            await http.post("/api/v1/usage", json=body, headers=world.admin.headers)
        ).status_code == 200
        assert (
            await http.post("/api/v1/usage", json=body, headers=world.admin.headers)
        ).status_code == 200
        bad = {"events": [event("m3", "nobody@example.com")]}
        r = await http.post("/api/v1/usage", json=bad, headers=world.admin.headers)
        assert r.status_code >= 400
        after = await scrape(http)
        name = "tokendesk_usage_ingest_events_total"

        def delta(outcome: str) -> float:
            return after.value(name, outcome=outcome) - before.value(name, outcome=outcome)

        assert (delta("recorded"), delta("replayed")) == (2, 2)
        assert delta("failed") in (0, 1)  # refused before the recorder, or by it

    async def test_holds_open_are_read_from_the_database(
        self, harness: Harness, world: World, database: Database
    ) -> None:
        before = await scrape(harness.http)
        async with database.transaction() as s:
            await ledger.reserve(s, user_id=world.alice.id, amount=700, ttl_seconds=600)
        after = await scrape(harness.http)
        assert after.value("tokendesk_holds_open") - before.value("tokendesk_holds_open") == 1
        assert (
            after.value("tokendesk_holds_open_tokens") - before.value("tokendesk_holds_open_tokens")
            == 700
        )
        assert "tokendesk_holds_overdue" in after

    async def test_in_memory_gauges_are_exposed(self, harness: Harness) -> None:
        s = await scrape(harness.http)
        assert s.value("tokendesk_event_streams_open") == 0
        assert s.value("tokendesk_gateway_calls_in_progress") == 0
        assert ("tokendesk_db_pool_connections") in s
        assert s.value("tokendesk_db_pool_connections", engine="write", state="in_use") >= 0
        assert "tokendesk_info" in s

    async def test_scheduler_ticks_are_counted(self, database: Database) -> None:
        metrics = Metrics()
        task = asyncio.create_task(
            scheduler.run_forever(database, interval=0.05, on_tick=metrics.scheduler_tick)
        )
        try:
            for _ in range(200):
                if (
                    Scrape(_exposed(metrics)).value("tokendesk_scheduler_runs_total", outcome="ok")
                    >= 2
                ):
                    break
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert Scrape(_exposed(metrics)).value("tokendesk_scheduler_runs_total", outcome="ok") >= 2


class TestAccess:
    @pytest.mark.parametrize("harness", [{"metrics_token": TOKEN}], indirect=True)
    async def test_with_a_token_a_scrape_needs_it(self, harness: Harness) -> None:
        http = harness.http
        assert (await http.get("/metrics")).status_code == 401
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer not-the-token-at-all"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == "Bearer"
        await scrape(http, Authorization=f"Bearer {TOKEN}")

    async def test_on_its_own_port_it_leaves_the_main_one(
        self, database: Database, db_url: str, world: World
    ) -> None:
        settings = Settings(
            database_url=db_url,
            demo=True,
            scheduler_enabled=False,
            metrics_port=0,
            metrics_token=TOKEN,
        )
        app = create_app(settings, database=database)
        transport = httpx.ASGITransport(app=app)
        async with (
            serving(app) as runtime,
            httpx.AsyncClient(transport=transport, base_url="http://test") as http,
        ):
            assert (await http.get("/metrics")).status_code == 404
            r = await http.post(
                "/v1/chat/completions", json=chat("demo"), headers=world.alice.headers
            )
            assert r.status_code == 200
            assert runtime.metrics_server is not None and runtime.metrics_server.port
            url = f"http://127.0.0.1:{runtime.metrics_server.port}"
            async with httpx.AsyncClient(base_url=url) as direct:
                assert (await direct.get("/metrics")).status_code == 401
                r = await direct.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/plain")
            assert calls(Scrape(r.text), "demo", "ok") == 1
        # Closed with the runtime: nothing listens there any more.
        async with httpx.AsyncClient(base_url=url) as direct:
            with pytest.raises(httpx.ConnectError):
                await direct.get("/metrics")

    async def test_a_metrics_port_in_use_stops_start_up_naming_the_setting(
        self, database: Database, db_url: str
    ) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            settings = Settings(
                database_url=db_url, demo=True, scheduler_enabled=False, metrics_port=port
            )
            app = create_app(settings, database=database)
            with pytest.raises(RuntimeError, match="TOKENDESK_METRICS_PORT"):
                async with serving(app):
                    pass

    @pytest.mark.parametrize("harness", [{"metrics_enabled": False}], indirect=True)
    async def test_turned_off_it_is_not_found(self, harness: Harness) -> None:
        assert (await harness.http.get("/metrics")).status_code == 404

    def test_a_short_token_is_refused_naming_the_setting(self) -> None:
        with pytest.raises(ValueError, match="metrics_token"):
            Settings(metrics_token="short")


def test_the_families_are_named_by_convention() -> None:
    metrics = Metrics(models=["m"])
    for family in metrics.registry.collect():
        assert family.name.startswith("tokendesk_")
        if family.type == "counter":
            assert not family.name.endswith("_total")  # the client adds it
    assert json.dumps([f.name for f in metrics.registry.collect()])


def test_a_value_on_a_bucket_bound_is_counted_in_that_bucket() -> None:
    metrics = Metrics()
    for seconds in (0.001, 0.0011, 100.0):
        metrics.added("chat", seconds)
    s = Scrape(_exposed(metrics))
    name = "tokendesk_gateway_added_latency_seconds_bucket"
    assert s.value(name, endpoint="chat", le="0.0005") == 0
    assert s.value(name, endpoint="chat", le="0.001") == 1
    assert s.value(name, endpoint="chat", le="0.002") == 2
    assert s.value(name, endpoint="chat", le="1.0") == 2
    assert s.value(name, endpoint="chat", le="+Inf") == 3
    assert s.value("tokendesk_gateway_added_latency_seconds_count", endpoint="chat") == 3
    assert s.value("tokendesk_gateway_added_latency_seconds_sum", endpoint="chat") == 100.0021
