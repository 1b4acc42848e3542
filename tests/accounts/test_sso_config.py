"""The identity providers as the operator configures them: a JSON list or a TOML file,
their defaults, start-up refused with a message naming the setting, and the README's
worked setups loading as written."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.serving import serving
from tokendesk.accounts.sso_config import ProviderConfig, load_providers
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database

README = Path(__file__).resolve().parents[2] / "README.md"
README_SECTION = "## Single sign-on (OpenID Connect)"


def settings(**values: Any) -> Settings:
    return Settings(demo=True, **values)


def entry(**values: Any) -> dict[str, Any]:
    """One provider with every required key; ``values`` override or add keys."""
    return {
        "name": "corp",
        "organization": "Acme",
        "issuer": "https://id.example.com",
        "client_id": "tokendesk",
        "client_secret": "s3cret",
        **values,
    }


def from_json(*entries: dict[str, Any]) -> Settings:
    return settings(oidc_providers=json.dumps(list(entries)))


class TestLoadProviders:
    def test_no_configuration_means_no_providers(self) -> None:
        assert load_providers(settings()) == {}

    def test_a_json_entry_takes_the_documented_defaults(self) -> None:
        corp = load_providers(from_json(entry()))["corp"]
        assert (corp.button, corp.scopes, corp.client_secret) == (
            "corp",
            "openid email profile",
            "s3cret",
        )
        assert (corp.email_claim, corp.name_claim, corp.groups_claim, corp.team_claim) == (
            "email",
            "name",
            "groups",
            None,
        )
        assert (corp.allowed_domains, corp.allowed_groups, corp.role_map, corp.team_map) == (
            (),
            (),
            {},
            {},
        )
        assert corp.require_verified_email is True
        assert corp.discovery_url == "https://id.example.com/.well-known/openid-configuration"

    def test_a_toml_file_with_providers_tables_loads_every_one(self, tmp_path: Path) -> None:
        path = tmp_path / "providers.toml"
        path.write_text(
            "[[providers]]\n"
            'name = "keycloak"\n'
            'label = "Acme Keycloak"\n'
            'organization = "Acme"\n'
            'issuer = "https://kc.example.com/realms/acme/"\n'
            'client_id = "tokendesk"\n'
            'client_secret = "kc-secret"\n'
            'groups_claim = "realm_access.roles"\n'
            'allowed_domains = ["@Acme.example"]\n'
            "[providers.role_map]\n"
            '"ai-admins" = "org_admin"\n'
            '"ai-leads" = "team_owner"\n'
            "[providers.team_map]\n"
            'research = "Research"\n'
            "\n"
            "[[providers]]\n"
            'name = "entra"\n'
            'organization = "Acme"\n'
            'issuer = "https://login.microsoftonline.com/tenant/v2.0"\n'
            'client_id = "app-id"\n'
            'scopes = "  openid   email profile "\n'
            'email_claim = "preferred_username"\n'
            "require_verified_email = false\n"
        )
        providers = load_providers(settings(oidc_providers_file=str(path)))
        assert list(providers) == ["keycloak", "entra"]
        keycloak, entra = providers["keycloak"], providers["entra"]
        assert keycloak.button == "Acme Keycloak"
        # A trailing slash would make every issuer comparison fail.
        assert keycloak.issuer == "https://kc.example.com/realms/acme"
        assert keycloak.allowed_domains == ("acme.example",)
        assert keycloak.role_map == {"ai-admins": "org_admin", "ai-leads": "team_owner"}
        assert keycloak.team_map == {"research": "Research"}
        assert keycloak.source == "oidc:keycloak"
        assert (entra.scopes, entra.email_claim, entra.require_verified_email) == (
            "openid email profile",
            "preferred_username",
            False,
        )
        assert entra.client_secret is None

    def test_the_json_setting_is_read_before_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "providers.toml"
        path.write_text('[[providers]]\nname = "from-file"\n')
        providers = load_providers(
            settings(oidc_providers=json.dumps([entry()]), oidc_providers_file=str(path))
        )
        assert list(providers) == ["corp"]


# (what is wrong, the JSON entries, what the message must also say)
REFUSED_JSON = [
    ("missing issuer", [{k: v for k, v in entry().items() if k != "issuer"}], "issuer"),
    (
        "missing organization",
        [{k: v for k, v in entry().items() if k != "organization"}],
        "organization",
    ),
    ("issuer not a URL", [entry(issuer="id.example.com")], "issuer"),
    ("name with a slash", [entry(name="corp/evil")], "name"),
    ("name with a space", [entry(name="Corp SSO")], "name"),
    ("name too long", [entry(name="x" * 51)], "name"),
    (
        "role_map to super_admin",
        [entry(role_map={"root": "super_admin"})],
        "role must be one of member, team_owner, org_admin",
    ),
    ("role_map to no role", [entry(role_map={"g": "boss"})], "role_map"),
    ("scopes without openid", [entry(scopes="email profile")], "openid"),
    ("misspelt key", [entry(client_secrets="x")], "client_secrets"),
    ("wrong type", [entry(allowed_domains="acme.example")], "allowed_domains"),
    ("duplicate names", [entry(), entry(client_id="other")], "'corp' appears twice"),
    ("not a list", {"name": "corp"}, "list"),
]


class TestRefusedConfiguration:
    @pytest.mark.parametrize(
        ("entries", "detail"),
        [pytest.param(entries, detail, id=case) for case, entries, detail in REFUSED_JSON],
    )
    def test_a_bad_json_entry_stops_start_up_naming_the_setting_and_the_key(
        self, entries: Any, detail: str
    ) -> None:
        with pytest.raises(SystemExit) as refused:
            load_providers(settings(oidc_providers=json.dumps(entries)))
        message = str(refused.value)
        assert "TOKENDESK_OIDC_PROVIDERS" in message
        assert detail in message

    def test_invalid_json_stops_start_up_naming_the_setting(self) -> None:
        with pytest.raises(SystemExit, match=r"TOKENDESK_OIDC_PROVIDERS is not valid.*line 1"):
            load_providers(settings(oidc_providers='[{"name": "corp",}]'))

    def test_invalid_toml_stops_start_up_naming_the_file_setting(self, tmp_path: Path) -> None:
        path = tmp_path / "providers.toml"
        path.write_text('[[providers]]\nname = "corp\n')
        with pytest.raises(SystemExit, match=r"TOKENDESK_OIDC_PROVIDERS_FILE .* not valid TOML"):
            load_providers(settings(oidc_providers_file=str(path)))

    def test_a_misspelt_table_stops_start_up_instead_of_configuring_nobody(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "providers.toml"
        path.write_text(
            '[[provider]]\nname = "corp"\norganization = "Acme"\nclient_id = "x"\n'
            'issuer = "https://id.example.com"\n'
        )
        with pytest.raises(SystemExit, match=r"unknown top-level key\(s\) provider"):
            load_providers(settings(oidc_providers_file=str(path)))

    def test_a_refusal_never_repeats_a_value_it_was_given(self) -> None:
        secret = "s3cret-client-value"
        bad = [entry(client_secret=secret, allowed_domains="acme.example", scopes=secret)]
        with pytest.raises(SystemExit) as refused:
            load_providers(settings(oidc_providers=json.dumps(bad)))
        message = str(refused.value)
        assert "allowed_domains" in message and "scopes" in message
        assert secret not in message
        assert "acme.example" not in message

    def test_a_bad_entry_in_the_file_stops_start_up(self, tmp_path: Path) -> None:
        path = tmp_path / "providers.toml"
        path.write_text(
            '[[providers]]\nname = "corp"\norganization = "Acme"\nclient_id = "x"\n'
            'issuer = "https://id.example.com"\nscopes = "profile"\n'
        )
        with pytest.raises(SystemExit, match=r"(?s)TOKENDESK_OIDC_PROVIDERS_FILE.*openid"):
            load_providers(settings(oidc_providers_file=str(path)))

    def test_a_missing_file_stops_start_up_naming_the_file_setting(self, tmp_path: Path) -> None:
        with pytest.raises(SystemExit, match=r"TOKENDESK_OIDC_PROVIDERS_FILE.*nope\.toml"):
            load_providers(settings(oidc_providers_file=str(tmp_path / "nope.toml")))


class TestStartUp:
    async def test_the_server_refuses_to_start_with_a_bad_provider(
        self, database: Database
    ) -> None:
        bad = from_json(entry(role_map={"root": "super_admin"}))
        app = create_app(bad, database=database)
        with pytest.raises(
            SystemExit, match=r"(?s)TOKENDESK_OIDC_PROVIDERS.*'root': role must be one of"
        ):
            async with serving(app):
                pytest.fail("the application started with a provider mapping super_admin")

    async def test_the_server_starts_with_its_providers_on_the_runtime(
        self, database: Database
    ) -> None:
        app = create_app(from_json(entry(), entry(name="other")), database=database)
        async with serving(app) as runtime:
            assert sorted(runtime.sso.providers) == ["corp", "other"]
            assert runtime.sso.client("other").client_id == "tokendesk"


def readme_section() -> str:
    text = README.read_text()
    start = text.index(README_SECTION)
    end = text.find("\n## ", start + len(README_SECTION))
    return text[start : end if end != -1 else len(text)]


def readme_toml_blocks() -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```$", readme_section(), flags=re.S | re.M)


class TestReadme:
    """The README's single sign-on section is what operators copy: it must load."""

    @pytest.mark.parametrize(
        "block",
        readme_toml_blocks(),
        ids=[f"example-{n}" for n in range(1, len(readme_toml_blocks()) + 1)],
    )
    def test_each_toml_example_loads_as_written(self, tmp_path: Path, block: str) -> None:
        path = tmp_path / "providers.toml"
        path.write_text(block)
        providers = load_providers(settings(oidc_providers_file=str(path)))
        assert providers, "the example configures no provider"

    def test_the_three_documented_setups_are_there(self) -> None:
        issuers = set()
        for block in readme_toml_blocks():
            for line in block.splitlines():
                if line.startswith("issuer"):
                    issuers.add(line)
        joined = "\n".join(sorted(issuers))
        assert "/realms/" in joined  # Keycloak
        assert "login.microsoftonline.com" in joined  # Entra ID
        assert "okta.com" in joined  # Okta

    def test_every_provider_key_is_documented(self) -> None:
        section = readme_section()
        missing = [key for key in ProviderConfig.model_fields if f"| `{key}` |" not in section]
        assert missing == []
