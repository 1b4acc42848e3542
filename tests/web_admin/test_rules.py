"""Auto-approve rules on the Settings page: the lists, the editor, its preview."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
from sqlalchemy import func, select, update

from tests.factories import World
from tests.token_requests.support import actor_for
from tests.web_admin.conftest import LoginFactory, submit, triggers
from tokendesk.audit.models import AuditEntry
from tokendesk.db import Database, utcnow
from tokendesk.token_requests import rule_admin, top_ups
from tokendesk.token_requests import transitions_repository as transitions
from tokendesk.token_requests.models import ApprovalRule, TokenRequest

RULE_ROW = re.compile(r'data-rule-id="(\d+)"')


def order(html: str, list_key: str = "org") -> list[int]:
    """The rule ids of one list, top to bottom."""
    section = html.split(f'data-rule-list="{list_key}"', 1)[1].split("</section>", 1)[0]
    return [int(found) for found in RULE_ROW.findall(section)]


def form(**values: str) -> dict[str, str]:
    fields = {
        "name": "",
        "team_id": "",
        "enabled": "1",
        "max_amount": "",
        "max_count": "",
        "max_tokens": "",
        "pool_floor": "",
    }
    fields.update(values)
    return {key: value for key, value in fields.items() if value is not None}


async def add(database: Database, world: World, name: str, **options: object) -> int:
    async with database.transaction() as s:
        rule = await rule_admin.add_rule(s, organization_id=world.org_id, name=name, **options)  # type: ignore[arg-type]
        return rule.id


async def rules_in(database: Database) -> list[tuple[str, int | None, bool, int | None]]:
    async with database.transaction() as s:
        rows = await s.execute(
            select(
                ApprovalRule.name,
                ApprovalRule.team_id,
                ApprovalRule.enabled,
                ApprovalRule.max_amount,
            ).order_by(ApprovalRule.id)
        )
        return [tuple(row) for row in rows.all()]  # type: ignore[misc]


class TestLists:
    async def test_an_admin_sees_each_list_with_its_caps(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        await add(database, world, "Small", max_amount=20_000, max_count=2, max_tokens=40_000)
        await add(database, world, "Pool", pool_floor=1_000_000, enabled=False)
        admin = await login(world.admin)
        page = (await admin.get("/admin/settings")).text
        assert 'id="rules"' in page
        assert len(order(page)) == 2
        assert "20,000" in page and "2 approvals, 40,000 tokens" in page
        assert "1,000,000" in page and "pill-cancelled" in page
        # Every team's list is there too, empty.
        assert f'data-rule-list="{world.team_a}"' in page
        assert 'aria-label="Delete Small"' in page

    async def test_a_team_owner_edits_their_teams_list_and_only_reads_the_organizations(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        org_rule = await add(database, world, "Org wide", max_amount=5_000)
        owner = await login(world.owner)
        page = (await owner.get("/admin/settings")).text
        assert order(page) == [org_rule]
        assert "(org admins change these)" in page
        assert 'aria-label="Delete Org wide"' not in page
        assert f'data-rule-list="{world.team_b}"' not in page
        # The editor offers their team's list only.
        choices = page.split('id="rule-team_id"', 1)[1].split("</select>", 1)[0]
        assert re.findall(r'<option value="(\d*)"', choices) == [str(world.team_a)]

        r = await owner.post("/admin/rules", form(name="Mine", team_id=str(world.team_a)))
        assert r.status_code == 200, r.text
        refused = await owner.post("/admin/rules", form(name="Theirs"))
        assert refused.status_code == 403
        assert "only org admins manage the organization" in refused.text
        assert (await owner.post(f"/admin/rules/{org_rule}/delete")).status_code in (403, 404)
        assert [name for name, *_ in await rules_in(database)] == ["Org wide", "Mine"]

    async def test_a_member_may_not_change_rules(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        member = await login(world.alice)
        response = await member.post("/admin/rules", form(name="x"))
        assert response.status_code == 403
        assert await rules_in(database) == []


class TestEditor:
    async def test_a_form_without_the_sessions_csrf_token_is_refused(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        r = await admin.post("/admin/rules", form(name="Sneaky"), csrf=False)
        assert r.status_code == 403
        r = await admin.post("/admin/top-up", top_up_form(), csrf=False)
        assert r.status_code == 403
        assert await rules_in(database) == []

    async def test_an_admin_adds_a_rule_and_it_is_audited(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        r = await admin.post(
            "/admin/rules", form(name="Small top-ups", max_amount="50,000", max_count="2")
        )
        assert r.status_code == 200, r.text
        assert triggers(r)["admin:toast"] == {"message": "Added rule Small top-ups.", "kind": "ok"}
        assert "Small top-ups" in r.text and len(order(r.text)) == 1
        assert await rules_in(database) == [("Small top-ups", None, True, 50_000)]
        async with database.transaction() as s:
            actions = list(await s.scalars(select(AuditEntry.action)))
        assert "approval_rule.created" in actions

    async def test_a_limit_that_is_not_a_number_is_named_next_to_it_and_nothing_written(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        r = await admin.post("/admin/rules", form(name="Bad", max_amount="lots"))
        assert r.status_code == 422
        assert 'id="rule-max_amount-error"' in r.text and "whole number" in r.text
        # What was typed stays in the form.
        assert 'value="lots"' in r.text and 'value="Bad"' in r.text
        assert await rules_in(database) == []

    async def test_a_blank_name_is_named(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        r = await admin.post("/admin/rules", form(name="  ", max_amount="10"))
        assert r.status_code == 422
        assert 'id="rule-name-error"' in r.text
        assert await rules_in(database) == []

    async def test_a_duplicate_name_is_named(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        await add(database, world, "Small")
        admin = await login(world.admin)
        r = await admin.post("/admin/rules", form(name="small"))
        assert r.status_code == 409
        assert 'id="rule-name-error"' in r.text and "exists in this list" in r.text
        assert len(await rules_in(database)) == 1

    async def test_editing_shows_the_rule_and_saves_its_new_limits(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        rule_id = await add(database, world, "Small", max_amount=20_000, max_count=2)
        admin = await login(world.admin)
        editor = (await admin.htmx_get(f"/admin/rules/{rule_id}/edit")).text
        assert "Edit rule Small" in editor and 'value="20,000"' in editor
        r = await admin.post(
            f"/admin/rules/{rule_id}", form(name="Smaller", max_amount="10000", max_count="")
        )
        assert r.status_code == 200, r.text
        assert await rules_in(database) == [("Smaller", None, True, 10_000)]
        async with database.transaction() as s:
            rule = await s.get(ApprovalRule, rule_id)
            assert rule is not None and rule.max_count is None

    async def test_a_bad_edit_keeps_the_rule_as_it_was(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        rule_id = await add(database, world, "Small", max_amount=20_000)
        admin = await login(world.admin)
        r = await admin.post(f"/admin/rules/{rule_id}", form(name="Small", max_count="0"))
        assert r.status_code == 422
        assert 'id="rule-max_count-error"' in r.text and "Edit rule Small" in r.text
        assert await rules_in(database) == [("Small", None, True, 20_000)]

    async def test_a_rule_is_turned_off_and_on(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        rule_id = await add(database, world, "Small")
        admin = await login(world.admin)
        r = await admin.post(f"/admin/rules/{rule_id}/enabled", {"enabled": "0"})
        assert r.status_code == 200 and "Turn on" in r.text
        assert (await rules_in(database))[0][2] is False
        await admin.post(f"/admin/rules/{rule_id}/enabled", {"enabled": "1"})
        assert (await rules_in(database))[0][2] is True

    async def test_moving_a_rule_changes_the_order_it_is_tried_in(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        first = await add(database, world, "First")
        second = await add(database, world, "Second")
        third = await add(database, world, "Third")
        admin = await login(world.admin)
        r = await admin.post(f"/admin/rules/{third}/move", {"direction": "up"})
        assert r.status_code == 200, r.text
        assert order(r.text) == [first, third, second]
        r = await admin.post(f"/admin/rules/{first}/move", {"direction": "up"})
        assert order(r.text) == [first, third, second]
        r = await admin.post(f"/admin/rules/{first}/move", {"direction": "sideways"})
        assert r.status_code == 422
        assert order((await admin.get("/admin/settings")).text) == [first, third, second]

    async def test_deleting_asks_first_and_removes_the_rule(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        rule_id = await add(database, world, "Small")
        admin = await login(world.admin)
        page = (await admin.get("/admin/settings")).text
        assert 'hx-confirm="Delete rule Small? What it approved stays approved."' in page
        r = await admin.post(f"/admin/rules/{rule_id}/delete")
        assert r.status_code == 200
        assert order(r.text) == [] and await rules_in(database) == []


class TestPreview:
    async def test_the_preview_counts_last_periods_requests_the_rule_would_have_approved(
        self, database: Database, world: World, login: LoginFactory, client: httpx.AsyncClient
    ) -> None:
        ids = [
            await submit(client, world.alice, 10_000),
            await submit(client, world.bob, 30_000),
            await submit(client, world.amy, 5_000),
        ]
        start, _ = rule_admin.last_period(utcnow(), reset_day=1, timezone="UTC")
        async with database.transaction() as s:
            for index, request_id in enumerate(ids):
                await s.execute(
                    update(TokenRequest)
                    .where(TokenRequest.id == request_id)
                    .values(created_at=start + timedelta(days=1, hours=index))
                )
        admin = await login(world.admin)

        html = (await admin.htmx_get("/admin/rules/preview?max_amount=20,000")).text
        assert "Would have auto-approved" in html
        figures = re.findall(r'id="preview-(\w+)">([\d,]+)<', html)
        assert dict(figures) == {"approved": "2", "requests": "3", "tokens": "15,000"}

        # Per person and per period: a cap of one approval still lets each person one.
        html = (await admin.htmx_get("/admin/rules/preview?max_count=1&max_tokens=9000")).text
        assert dict(re.findall(r'id="preview-(\w+)">([\d,]+)<', html))["approved"] == "1"

        # A team's rule sees that team's requests only.
        html = (await admin.htmx_get(f"/admin/rules/preview?team_id={world.team_a}")).text
        assert dict(re.findall(r'id="preview-(\w+)">([\d,]+)<', html))["requests"] == "2"

    async def test_the_auto_top_ups_grants_are_no_requests_to_preview(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin_actor = await actor_for(database, world.admin)
        start, _ = rule_admin.last_period(utcnow(), reset_day=1, timezone="UTC")
        figures = {"enabled": True, "trigger_percent": 80, "top_up_amount": 10, "max_count": 1}
        async with database.transaction() as s:
            rule = await top_ups.set_top_up(s, actor=admin_actor, values=figures)
            assert rule.id is not None
            await transitions.insert_granted(
                s,
                organization_id=world.org_id,
                user_id=world.alice.id,
                team_id=world.team_a,
                amount=10,
                reason="Auto top-up",
                balance_at_request=0,
                rule=(rule.id, rule.name),
                note="auto-approved by rule Auto top-up",
                now=start + timedelta(days=2),
            )
        admin = await login(world.admin)
        html = (await admin.htmx_get("/admin/rules/preview")).text
        assert "had no requests to try it on" in html

    async def test_a_bad_limit_in_the_preview_is_named_and_nothing_is_counted(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        response = await admin.htmx_get("/admin/rules/preview?max_amount=lots")
        assert response.status_code == 200
        assert "Requests of at most: must be a whole number" in response.text
        assert "Would have" not in response.text

    async def test_the_editor_asks_for_its_preview_as_it_changes(
        self, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        page = (await admin.get("/admin/settings")).text
        assert 'hx-get="/admin/rules/preview"' in page and 'id="rule-preview"' in page

    async def test_previewing_writes_nothing(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        async with database.transaction() as s:
            before = await s.scalar(select(func.count()).select_from(AuditEntry))
        await admin.htmx_get("/admin/rules/preview?max_amount=100")
        async with database.transaction() as s:
            assert await s.scalar(select(func.count()).select_from(AuditEntry)) == before


def top_up_form(**values: str) -> dict[str, str]:
    fields = {
        "enabled": "1",
        "trigger_percent": "80",
        "top_up_amount": "10,000",
        "cooldown_minutes": "60",
        "max_count": "3",
        "max_tokens": "",
        "pool_floor": "",
    }
    fields.update(values)
    return fields


async def top_up_rules(database: Database) -> list[tuple[bool, int | None]]:
    async with database.transaction() as s:
        rows = await s.execute(
            select(ApprovalRule.enabled, ApprovalRule.top_up_amount).where(
                ApprovalRule.kind == "top_up"
            )
        )
        return [tuple(row) for row in rows.all()]  # type: ignore[misc]


class TestTopUp:
    async def test_it_is_off_until_an_admin_turns_it_on(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        page = (await admin.get("/admin/settings")).text
        assert 'id="top-up-state">off<' in page
        r = await admin.post("/admin/top-up", top_up_form())
        assert r.status_code == 200, r.text
        assert 'id="top-up-state">on<' in r.text and 'value="10,000"' in r.text
        assert triggers(r)["admin:toast"] == {"message": "Auto top-up saved: on.", "kind": "ok"}
        assert await top_up_rules(database) == [(True, 10_000)]
        # It is no rule of the lists above it.
        assert order((await admin.get("/admin/settings")).text) == []

    async def test_a_bad_figure_is_named_next_to_it_and_nothing_saved(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        admin = await login(world.admin)
        r = await admin.post("/admin/top-up", top_up_form(trigger_percent="150"))
        assert r.status_code == 422
        assert 'id="top-trigger_percent-error"' in r.text and 'value="150"' in r.text
        r = await admin.post("/admin/top-up", top_up_form(max_count=""))
        assert r.status_code == 422 and 'id="top-max_count-error"' in r.text
        assert await top_up_rules(database) == []

    async def test_a_team_owner_sees_it_and_may_not_change_it(
        self, database: Database, world: World, login: LoginFactory
    ) -> None:
        owner = await login(world.owner)
        page = (await owner.get("/admin/settings")).text
        assert "Only org admins change the auto top-up." in page
        assert (await owner.post("/admin/top-up", top_up_form())).status_code == 403
        assert await top_up_rules(database) == []
