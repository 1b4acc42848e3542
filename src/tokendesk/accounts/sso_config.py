"""The identity providers people sign in with (OpenID Connect), as the operator configures
them: ``TOKENDESK_OIDC_PROVIDERS`` (a JSON list) or ``TOKENDESK_OIDC_PROVIDERS_FILE``
(TOML, ``[[providers]]`` tables). Each one is tied to one organization."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from authlib.integrations.starlette_client import OAuth, StarletteOAuth2App
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from tokendesk.accounts.models import PROVIDER_SOURCE, Role
from tokendesk.config import Settings

# The provider's name is the id in its callback path: letters, digits, - and _.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,49}")
# Roles a directory group may grant. A super admin spans organizations, and a provider
# speaks for one, so super admins are made with the CLI only.
MAPPABLE_ROLES = (Role.MEMBER, Role.TEAM_OWNER, Role.ORG_ADMIN)


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Shown on the button; the id in /auth/oidc/{name}/callback.")
    label: str | None = Field(default=None, description="Button text; default the name.")
    organization: str = Field(min_length=1, description="The organization, by name.")
    issuer: str = Field(min_length=1, description="Issuer URL; discovery is read from it.")
    client_id: str = Field(min_length=1)
    client_secret: str | None = None
    scopes: str = "openid email profile"
    allowed_domains: tuple[str, ...] = ()
    # A person in none of these groups may not sign in (empty: any group, or none).
    allowed_groups: tuple[str, ...] = ()
    email_claim: str = "email"
    name_claim: str = "name"
    groups_claim: str = "groups"
    # Group -> role; applied at every sign-in. Empty: roles are managed in tokendesk.
    role_map: dict[str, Role] = Field(default_factory=dict)
    # Group -> team name, or a claim holding the team name; applied at every sign-in.
    team_map: dict[str, str] = Field(default_factory=dict)
    team_claim: str | None = None
    # Linking an existing account by email trusts the provider's word that the address
    # is the person's: providers that never send email_verified (Entra ID) turn this off.
    require_verified_email: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                "letters, digits, '-' and '_' only (it is part of the callback path), "
                "at most 50 characters"
            )
        return value

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be the provider's http(s) issuer URL")
        return value.rstrip("/")

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: str) -> str:
        scopes = value.split()
        if "openid" not in scopes:
            raise ValueError("must include 'openid'")
        return " ".join(scopes)

    @field_validator("allowed_domains")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(domain.strip().lower().lstrip("@") for domain in value if domain.strip())

    @field_validator("role_map")
    @classmethod
    def _roles(cls, value: dict[str, Role]) -> dict[str, Role]:
        for group, role in value.items():
            if role not in MAPPABLE_ROLES:
                raise ValueError(
                    f"group {group!r}: role must be one of "
                    f"{', '.join(r.value for r in MAPPABLE_ROLES)}"
                )
        return value

    @property
    def button(self) -> str:
        return self.label or self.name

    @property
    def source(self) -> str:
        """The namespace of this provider's subjects in ``external_identities``."""
        return f"{PROVIDER_SOURCE}{self.name}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"


# Calls to a provider (discovery, JWKS, the token exchange) never wait longer.
PROVIDER_TIMEOUT_SECONDS = 10.0

_providers = TypeAdapter(list[ProviderConfig])


def load_providers(settings: Settings) -> dict[str, ProviderConfig]:
    """Providers by name; none unless configured. Refuses to start on a bad entry,
    naming the setting and the entry's field but never a value (a secret may be one)."""
    if settings.oidc_providers:
        source = "TOKENDESK_OIDC_PROVIDERS"
        raw = _read_json(source, settings.oidc_providers)
    elif settings.oidc_providers_file:
        source = f"TOKENDESK_OIDC_PROVIDERS_FILE ({settings.oidc_providers_file})"
        raw = _read_toml(source, Path(settings.oidc_providers_file))
    else:
        return {}
    try:
        providers = _providers.validate_python(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"providers[{'.'.join(str(part) for part in error['loc'])}]: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise SystemExit(f"{source} is invalid: {problems}") from None
    by_name: dict[str, ProviderConfig] = {}
    for provider in providers:
        if provider.name in by_name:
            raise SystemExit(f"{source}: provider {provider.name!r} appears twice")
        by_name[provider.name] = provider
    return by_name


def _read_json(source: str, text: str) -> Any:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(raw, list):
        raise SystemExit(f"{source} must be a JSON list of providers")
    return raw


def _read_toml(source: str, path: Path) -> Any:
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise SystemExit(f"{source} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SystemExit(f"{source} is not valid TOML: {exc}") from None
    # A misspelt table ([[provider]]) would otherwise configure nobody without a word.
    unknown = sorted(set(document) - {"providers"})
    if unknown:
        raise SystemExit(
            f"{source}: unknown top-level key(s) {', '.join(unknown)}; "
            "each provider is a [[providers]] table"
        )
    if not isinstance(document.get("providers"), list):
        raise SystemExit(f"{source} has no [[providers]] tables")
    return document["providers"]


def claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by name or by dotted path into nested objects (``realm_access.roles``)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def groups_of(claims: dict[str, Any], path: str) -> frozenset[str]:
    value = claim(claims, path)
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, list):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


class SingleSignOn:
    """The configured providers and their Authlib clients (part of the runtime)."""

    def __init__(self, settings: Settings) -> None:
        self.providers = load_providers(settings)
        self._oauth = OAuth()
        for provider in self.providers.values():
            self._oauth.register(
                name=provider.name,
                client_id=provider.client_id,
                client_secret=provider.client_secret,
                server_metadata_url=provider.discovery_url,
                client_kwargs={
                    "scope": provider.scopes,
                    "code_challenge_method": "S256",
                    "timeout": PROVIDER_TIMEOUT_SECONDS,
                },
            )

    @property
    def organizations(self) -> frozenset[str]:
        """The organizations, by name, some provider signs people in to."""
        return frozenset(provider.organization for provider in self.providers.values())

    def client(self, name: str) -> StarletteOAuth2App:
        client: StarletteOAuth2App = self._oauth.create_client(name)
        return client
