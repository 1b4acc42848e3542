"""The operator CLI against a throwaway SQLite file, in-process and as a real process."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner, Result

from tokendesk.cli import app
from tokendesk.config import get_settings
from tokendesk.migrations.runner import upgrade as runner_upgrade

runner = CliRunner()


@pytest.fixture
def db_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh SQLite file that the CLI reads from TOKENDESK_DATABASE_URL (not yet migrated)."""
    path = tmp_path / "cli.db"
    monkeypatch.setenv("TOKENDESK_DATABASE_URL", f"sqlite+aiosqlite:///{path}")
    monkeypatch.delenv("TOKENDESK_DEMO", raising=False)
    monkeypatch.delenv("TOKENDESK_SECRET_KEY", raising=False)
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


@pytest.fixture
def migrated(db_file: Path) -> Path:
    ok(invoke("db", "upgrade"))
    return db_file


@pytest.fixture
def acme(migrated: Path) -> Path:
    """Acme (Europe/Berlin, default 100,000) with team Research (150,000) and one member."""
    ok(invoke("org", "create", "--name", "Acme", "--timezone", "Europe/Berlin"))
    ok(invoke("team", "create", "--org", "Acme", "--name", "Research", "--allocation", "150000"))
    ok(
        invoke(
            "user", "create", "--org", "Acme", "--email", "mia@acme.example", "--name", "Mia",
            "--role", "member", "--team", "Research", "--password", "long enough",
        )
    )  # fmt: skip
    return migrated


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    return result


def failed(result: Result) -> str:
    """The one-line error of a command that must fail cleanly (status 1, no traceback)."""
    assert result.exit_code == 1, f"exit {result.exit_code}: {result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def query(path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


def execute(path: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(sql, params)


class TestDbUpgrade:
    def test_migrations_run_from_a_folder_outside_the_repository(self, tmp_path: Path) -> None:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        path = tmp_path / "nested" / "folder" / "fresh.db"
        env = {**os.environ, "TOKENDESK_DATABASE_URL": f"sqlite+aiosqlite:///{path}"}
        done = subprocess.run(
            [sys.executable, "-m", "tokendesk.cli", "db", "upgrade"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        tables = {row[0] for row in query(path, "SELECT name FROM sqlite_master")}
        assert {"organizations", "users", "balances", "ledger_entries"} <= tables
        assert query(path, "SELECT version_num FROM alembic_version") != []

    def test_upgrading_an_up_to_date_database_changes_nothing(self, migrated: Path) -> None:
        before = query(migrated, "SELECT version_num FROM alembic_version")
        assert "latest schema" in ok(invoke("db", "upgrade")).stdout
        assert query(migrated, "SELECT version_num FROM alembic_version") == before


class TestEmailMigration:
    """``db upgrade`` stopping at 0007 says why in one line (tests/test_migrations.py
    covers the migration itself on each backend)."""

    def test_addresses_differing_only_in_case_stop_the_upgrade_naming_them(
        self, db_file: Path
    ) -> None:
        runner_upgrade(f"sqlite+aiosqlite:///{db_file}", "0006")
        execute(
            db_file,
            "INSERT INTO organizations (id, name, default_allocation, reset_day, timezone, "
            "max_request, low_balance_percent, created_at) "
            "VALUES (1, 'Acme', 1, 1, 'UTC', 1, 20, '2026-01-01 00:00:00')",
        )
        for index, email in enumerate(("Ann@Corp.Example", "ann@corp.example", "bob@corp.example")):
            execute(
                db_file,
                "INSERT INTO users (id, organization_id, email, name, role, is_active, created_at) "
                "VALUES (?, 1, ?, 'X', 'member', 1, '2026-01-01 00:00:00')",
                index + 1,
                email,
            )
        message = failed(invoke("db", "upgrade"))
        assert message.startswith("error: database not upgraded: ")
        assert "Ann@Corp.Example and ann@corp.example" in message and "bob" not in message
        assert query(db_file, "SELECT version_num FROM alembic_version") == [("0006",)]


class TestOrgCreate:
    def test_organization_is_created_with_the_given_settings(self, migrated: Path) -> None:
        ok(
            invoke(
                "org", "create", "--name", "Initech", "--allocation", "50000", "--reset-day",
                "15", "--timezone", "America/Chicago", "--max-request", "20000", "--pool", "900000",
            )
        )  # fmt: skip
        rows = query(
            migrated,
            "SELECT default_allocation, reset_day, timezone, max_request, pool "
            "FROM organizations WHERE name = 'Initech'",
        )
        assert rows == [(50_000, 15, "America/Chicago", 20_000, 900_000)]

    def test_unknown_timezone_fails_with_a_message_naming_it(self, migrated: Path) -> None:
        message = failed(invoke("org", "create", "--name", "Initech", "--timezone", "Mars/Base"))
        assert message == "error: timezone: unknown IANA time zone 'Mars/Base'"
        assert query(migrated, "SELECT count(*) FROM organizations") == [(0,)]

    def test_reset_day_outside_1_to_28_names_the_option(self, migrated: Path) -> None:
        message = failed(invoke("org", "create", "--name", "Initech", "--reset-day", "31"))
        assert message.startswith("error: --reset-day: ")
        assert "28" in message

    def test_negative_allocation_is_refused(self, migrated: Path) -> None:
        message = failed(invoke("org", "create", "--name", "Initech", "--allocation", "-5"))
        assert message.startswith("error: --allocation: ")

    def test_a_second_organization_with_the_same_name_is_refused(self, acme: Path) -> None:
        message = failed(invoke("org", "create", "--name", "Acme"))
        assert message == "error: name: an organization named 'Acme' already exists"


class TestTeamCommands:
    def test_team_is_created_in_the_named_organization(self, acme: Path) -> None:
        ok(invoke("team", "create", "--org", "Acme", "--name", "Support"))
        rows = query(
            acme,
            "SELECT t.default_allocation FROM teams t JOIN organizations o "
            "ON o.id = t.organization_id WHERE o.name = 'Acme' AND t.name = 'Support'",
        )
        assert rows == [(None,)]

    def test_unknown_organization_is_named_in_the_error(self, migrated: Path) -> None:
        message = failed(invoke("team", "create", "--org", "Nowhere", "--name", "Support"))
        assert message == "error: organization 'Nowhere' not found"

    def test_adding_an_owner_makes_a_member_a_team_owner(self, acme: Path) -> None:
        ok(
            invoke(
                "team", "add-owner", "--org", "Acme", "--team", "Research",
                "--email", "mia@acme.example",
            )
        )  # fmt: skip
        assert query(acme, "SELECT role FROM users WHERE email = 'mia@acme.example'") == [
            ("team_owner",)
        ]
        assert query(acme, "SELECT count(*) FROM team_owners") == [(1,)]

    def test_unknown_team_is_named_in_the_error(self, acme: Path) -> None:
        message = failed(
            invoke(
                "team", "add-owner", "--org", "Acme", "--team", "Legal",
                "--email", "mia@acme.example",
            )
        )  # fmt: skip
        assert message == "error: team 'Legal' not found"


class TestUserCreate:
    def test_member_starts_the_period_with_the_team_allocation(self, acme: Path) -> None:
        rows = query(
            acme,
            "SELECT b.allocation, b.used, u.password_hash IS NOT NULL FROM balances b "
            "JOIN users u ON u.id = b.user_id WHERE u.email = 'mia@acme.example'",
        )
        assert rows == [(150_000, 0, 1)]

    def test_personal_allocation_overrides_the_defaults(self, acme: Path) -> None:
        ok(
            invoke(
                "user", "create", "--org", "Acme", "--email", "max@acme.example", "--name", "Max",
                "--role", "org_admin", "--allocation", "7000",
            )
        )  # fmt: skip
        rows = query(
            acme,
            "SELECT u.role, u.team_id, b.allocation FROM users u "
            "JOIN balances b ON b.user_id = u.id WHERE u.email = 'max@acme.example'",
        )
        assert rows == [("org_admin", None, 7_000)]

    def test_an_invalid_email_is_refused_and_nothing_is_written(self, acme: Path) -> None:
        message = failed(
            invoke(
                "user", "create", "--org", "Acme", "--email", "not-an-email", "--name", "X",
                "--role", "member",
            )
        )  # fmt: skip
        assert message.startswith("error: email: ")
        assert query(acme, "SELECT count(*) FROM users") == [(1,)]

    def test_a_duplicate_email_is_refused(self, acme: Path) -> None:
        message = failed(
            invoke(
                "user", "create", "--org", "Acme", "--email", "MIA@acme.example", "--name", "Mia",
                "--role", "member",
            )
        )  # fmt: skip
        assert message == "error: email: a user with email 'mia@acme.example' already exists"

    @pytest.mark.parametrize("email", ["ann@corp.local", "Ann@Acme.Internal", "ann@localhost"])
    def test_an_internal_domain_is_accepted_and_stored_lower_cased(
        self, acme: Path, email: str
    ) -> None:
        ok(
            invoke(
                "user", "create", "--org", "Acme", "--email", email, "--name", "Ann",
                "--role", "member",
            )
        )  # fmt: skip
        assert query(acme, "SELECT email FROM users WHERE name = 'Ann'") == [(email.lower(),)]

    def test_an_unknown_role_is_a_usage_error(self, acme: Path) -> None:
        result = invoke(
            "user", "create", "--org", "Acme", "--email", "x@acme.example", "--name", "X",
            "--role", "emperor",
        )  # fmt: skip
        assert result.exit_code == 2
        assert "--role" in result.stderr


class TestApiKeyCreate:
    def test_the_key_is_alone_on_the_last_line(self, acme: Path) -> None:
        result = ok(invoke("apikey", "create", "--email", "mia@acme.example", "--name", "laptop"))
        key = result.stdout.strip().splitlines()[-1]
        assert key.startswith("td_")
        assert " " not in key
        assert query(acme, "SELECT name, prefix FROM api_keys") == [("laptop", key[:10])]

    def test_an_unknown_email_fails_cleanly(self, acme: Path) -> None:
        message = failed(invoke("apikey", "create", "--email", "ghost@acme.example"))
        assert message == "error: user 'ghost@acme.example' not found"


class TestIntegrationKeys:
    def test_the_integration_key_is_alone_on_the_last_line(self, acme: Path) -> None:
        result = ok(
            invoke(
                "apikey", "create", "--integration", "--org", "Acme", "--name", "Open WebUI",
                "--preset", "open-webui", "--jwt-secret", "s" * 32,
            )
        )  # fmt: skip
        key = result.stdout.strip().splitlines()[-1]
        assert key.startswith("tdi_") and " " not in key
        assert query(acme, "SELECT name, preset, prefix, jwt_secret FROM integrations") == [
            ("Open WebUI", "open-webui", key[:11], "s" * 32)
        ]
        audited = "SELECT actor_id, details FROM audit_log WHERE action = 'integration.created'"
        assert query(acme, audited) == [
            (None, '{"name": "Open WebUI", "preset": "open-webui", "signed": true}')
        ]

    def test_header_overrides_are_checked_and_named_by_option(self, acme: Path) -> None:
        message = failed(
            invoke(
                "apikey", "create", "--integration", "--org", "Acme", "--name", "Chat",
                "--user-id-header", "X User",
            )
        )  # fmt: skip
        assert message.startswith("error: --user-id-header: must be an HTTP header name")
        assert query(acme, "SELECT count(*) FROM integrations") == [(0,)]

    def test_a_short_secret_is_refused(self, acme: Path) -> None:
        message = failed(
            invoke(
                "apikey", "create", "--integration", "--org", "Acme", "--name", "Chat",
                "--jwt-secret", "short",
            )
        )  # fmt: skip
        assert message.startswith("error: --jwt-secret:")

    def test_an_integration_key_needs_its_organization(self, acme: Path) -> None:
        message = failed(invoke("apikey", "create", "--integration", "--name", "Chat"))
        assert message == "error: --org: an integration key needs its organization"

    def test_integration_options_are_refused_on_a_personal_key(self, acme: Path) -> None:
        message = failed(
            invoke("apikey", "create", "--email", "mia@acme.example", "--jwt-secret", "s" * 32)
        )
        assert message == "error: --jwt-secret: only for an integration key (--integration)"
        assert query(acme, "SELECT count(*) FROM api_keys") == [(0,)]

    def test_list_then_revoke(self, acme: Path) -> None:
        ok(invoke("apikey", "create", "--integration", "--org", "Acme", "--name", "LibreChat"))
        (integration_id,) = query(acme, "SELECT id FROM integrations")[0]
        listed = ok(invoke("integration", "list", "--org", "Acme")).stdout.strip()
        assert listed.split("\t")[:3] == [str(integration_id), "LibreChat", "generic"]
        assert listed.endswith("never used\tactive")
        revoked = ok(invoke("integration", "revoke", str(integration_id))).stdout
        assert revoked.strip() == f"revoked integration {integration_id} ('LibreChat')"
        listed = ok(invoke("integration", "list", "--org", "Acme")).stdout.strip()
        assert listed.endswith("\trevoked")
        audited = "SELECT actor_id FROM audit_log WHERE action = 'integration.revoked'"
        assert query(acme, audited) == [(None,)]
        again = failed(invoke("integration", "revoke", str(integration_id)))
        assert again == f"error: integration {integration_id} is already revoked"

    def test_an_unknown_integration_fails_cleanly(self, acme: Path) -> None:
        assert failed(invoke("integration", "revoke", "99")) == "error: integration 99 not found"
        listed = ok(invoke("integration", "list", "--org", "Acme")).stdout.strip()
        assert listed == "no integrations in 'Acme'"


class TestDoctor:
    def test_consistent_balances_exit_0(self, acme: Path) -> None:
        result = ok(invoke("doctor"))
        assert result.stdout.strip() == "all 1 balances match the ledger"

    def test_a_tampered_balance_exits_1_and_is_named(self, acme: Path) -> None:
        execute(acme, "UPDATE balances SET granted = granted + 500")
        result = invoke("doctor")
        assert result.exit_code == 1
        assert "<mia@acme.example>: granted is 500 in the balance row but 0 by the ledger" in (
            result.stdout
        )
        assert "1 of 1 balances disagree with the ledger" in result.stderr

    def test_rollups_are_checked_against_raw_events_on_request(self, db_file: Path) -> None:
        ok(invoke("demo"))
        assert "rollups match the raw events" in ok(invoke("doctor", "--rollups")).stdout
        execute(db_file, "UPDATE usage_team_daily SET total_tokens = total_tokens + 1")
        result = invoke("doctor", "--rollups")
        assert result.exit_code == 1
        assert "rollup differs from raw events: usage_team_daily" in result.stdout


class TestResetRun:
    def test_an_ended_period_is_reset_once(self, acme: Path) -> None:
        # As if Mia had joined in December 1999 and nothing had run since.
        old_start, old_end = "1999-12-01 00:00:00.000000", "2000-01-01 00:00:00.000000"
        execute(acme, "UPDATE balances SET period_start = ?, period_end = ?", old_start, old_end)
        execute(acme, "UPDATE ledger_entries SET period_start = ?", old_start)
        assert ok(invoke("reset", "run")).stdout.strip() == "1 balances reset, 0 holds expired"
        assert ok(invoke("reset", "run")).stdout.strip() == "0 balances reset, 0 holds expired"
        ok(invoke("doctor"))


class TestDemo:
    def test_demo_prints_logins_and_keys_once_then_seeds_nothing(self, db_file: Path) -> None:
        first = ok(invoke("demo")).stdout
        assert "admin@acme.example" in first and "demo-password" in first
        keys = [line.split()[-1] for line in first.splitlines() if " td_" in line]
        assert len(keys) == query(db_file, "SELECT count(*) FROM users")[0][0] >= 9
        second = ok(invoke("demo")).stdout
        assert "already exists; nothing seeded" in second
        assert "admin@acme.example" in second and " td_" not in second
        assert query(db_file, "SELECT count(*) FROM api_keys") == [(len(keys),)]


class TestBadSettings:
    def test_a_malformed_setting_is_named(
        self, migrated: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TOKENDESK_PORT", "eighty")
        get_settings.cache_clear()
        assert failed(invoke("doctor")).startswith("error: bad setting: TOKENDESK_PORT: ")


class TestUnmigratedDatabase:
    def test_commands_point_to_db_upgrade(self, db_file: Path) -> None:
        message = failed(invoke("org", "create", "--name", "Acme"))
        assert "tokendesk db upgrade" in message


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestServe:
    def test_the_placeholder_secret_is_refused_outside_demo_mode(self, acme: Path) -> None:
        message = failed(invoke("serve"))
        assert "TOKENDESK_SECRET_KEY" in message

    @staticmethod
    def _served(monkeypatch: pytest.MonkeyPatch, trusted: str) -> dict[str, Any]:
        """What ``serve`` hands uvicorn with these trusted proxies (uvicorn is not run)."""
        import uvicorn

        monkeypatch.setenv("TOKENDESK_DEMO", "1")
        monkeypatch.setenv("TOKENDESK_FORWARDED_ALLOW_IPS", trusted)
        get_settings.cache_clear()
        served: dict[str, Any] = {}
        monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: served.update(kwargs))
        ok(invoke("serve"))
        return served

    def test_the_trusted_proxies_are_handed_to_uvicorn(
        self, acme: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        served = self._served(monkeypatch, "10.0.0.5, 192.168.0.0/16")
        assert served["proxy_headers"] is True
        assert served["forwarded_allow_ips"] == "10.0.0.5,192.168.0.0/16"

    def test_no_trusted_proxy_turns_proxy_headers_off(
        self, acme: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert self._served(monkeypatch, "")["proxy_headers"] is False

    def test_a_trusted_proxy_that_is_no_address_is_refused(
        self, acme: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TOKENDESK_DEMO", "1")
        monkeypatch.setenv("TOKENDESK_FORWARDED_ALLOW_IPS", "proxy.internal")
        get_settings.cache_clear()
        message = failed(invoke("serve"))
        assert "TOKENDESK_FORWARDED_ALLOW_IPS" in message and "proxy.internal" in message

    def test_an_unmigrated_database_is_refused(
        self, db_file: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TOKENDESK_DEMO", "1")
        get_settings.cache_clear()
        message = failed(invoke("serve"))
        assert "run `tokendesk db upgrade` first" in message

    def test_a_key_from_the_cli_authenticates_against_the_served_api(
        self, acme: Path, tmp_path: Path
    ) -> None:
        key = ok(invoke("apikey", "create", "--email", "mia@acme.example")).stdout.split()[-1]
        port = _free_port()
        env = {
            **os.environ,
            "TOKENDESK_SECRET_KEY": "a-long-random-test-secret-value",
            "TOKENDESK_SCHEDULER_ENABLED": "0",
        }
        log = (tmp_path / "serve.log").open("w")
        server = subprocess.Popen(
            [sys.executable, "-m", "tokendesk.cli", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    httpx.get(f"{base}/healthz", timeout=1).raise_for_status()
                    break
                except httpx.TransportError:
                    # Nothing to await across processes: poll the port, bounded in time.
                    assert time.monotonic() < deadline, "server did not start within 30 s"
                    time.sleep(0.1)
            me = httpx.get(f"{base}/api/v1/me", headers={"Authorization": f"Bearer {key}"})
            assert me.status_code == 200, me.text
            assert me.json()["email"] == "mia@acme.example"
            bad = httpx.get(f"{base}/api/v1/me", headers={"Authorization": "Bearer td_wrong"})
            assert bad.status_code == 401
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


class TestHelp:
    def test_every_command_and_option_has_help_text(self) -> None:
        commands = list(_commands(typer.main.get_command(app)))
        assert len(commands) >= 16
        for path, command in commands:
            result = runner.invoke(app, [*path, "--help"])
            assert result.exit_code == 0, (path, result.output)
            assert command.help, f"{' '.join(path)} has no help text"
            for param in command.params:
                if param.param_type_name == "option" and param.name != "help":
                    assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"

    def test_the_quick_reference_lists_every_command_group(self) -> None:
        output = ok(runner.invoke(app, ["--help"])).stdout
        groups = ("serve", "db", "demo", "reset", "doctor", "org", "team", "user", "apikey")
        for name in (*groups, "integration"):
            assert name in output
