"""The whole OpenAPI description, fuzzed by Schemathesis against a live server.

Every operation of ``/api/v1`` and the gateway is called with generated input, as a
member and as an org admin, on SQLite and on PostgreSQL: no answer may be a 5xx, and
every answer must match the schema the description documents for its status code.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import SUMMARY, wipe
from tests.factories import Person, make_world
from tests.web_admin.live_server import LiveServer, running
from tokendesk.app import create_app
from tokendesk.config import Settings
from tokendesk.db import Database
from tokendesk.gateway.model_config import DEMO_MODEL

# Generated cases per operation and identity, past the schema's boundary cases (the
# coverage phase); the run stays within a couple of minutes on a small machine.
MAX_EXAMPLES = 10
# The event stream never ends by design, so a call to it cannot complete.
EXCLUDED_PATHS = ["/events"]
COMPLETIONS = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
# The gateway's APIs whose calls the demo model answers once it is named.
METERED = (
    COMPLETIONS,
    EMBEDDINGS,
    "/v1/responses",
    "/v1/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
)


@dataclass
class Run:
    """What the fuzzing did, per (identity, operation), for the run's closing report."""

    backend: str
    cases: Counter[tuple[str, str]]
    failures: Counter[tuple[str, str]]

    def summary(self) -> str:
        operations = {label for _, label in self.cases}
        return (
            f"schemathesis on {self.backend}: {len(operations)} operations, "
            f"{len(self.cases)} operation runs (member and org admin), "
            f"{sum(self.cases.values())} cases, {sum(self.failures.values())} failing cases"
        )


async def _seed(url: str) -> dict[str, Person]:
    database = Database(url)
    try:
        await wipe(database)
        world = await make_world(database)
    finally:
        await database.dispose()
    return world.people


@pytest.fixture(scope="module")
def live(
    db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, dict[str, Person]]]:
    """A server on the session's (migrated) database, seeded with the factories' world."""
    people = asyncio.run(_seed(db_url))
    log = tmp_path_factory.mktemp("schema") / "server.log"
    with running(db_url, log_path=log, secret=secrets.token_hex(16)) as server:
        yield server, people


@pytest.fixture(scope="module")
def run_figures(request: pytest.FixtureRequest, backend: str) -> Iterator[Run]:
    run = Run(backend, Counter(), Counter())
    yield run
    request.config.stash[SUMMARY].append(run.summary())


@pytest.fixture(scope="module", params=["member", "org_admin"])
def identity(request: pytest.FixtureRequest, live: tuple[LiveServer, dict[str, Person]]) -> Person:
    _, people = live
    return people["alice" if request.param == "member" else "admin"]


# The description is the application's own; building it needs no database.
_app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:", demo=True))
schema = schemathesis.openapi.from_dict(_app.openapi()).exclude(path=EXCLUDED_PATHS)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation_answers_without_server_error_and_as_documented(
    case: schemathesis.Case,
    identity: Person,
    live: tuple[LiveServer, dict[str, Person]],
    run_figures: Run,
) -> None:
    label = (identity.email, case.operation.label)
    run_figures.cases[label] += 1
    body = case.body
    if case.operation.path in METERED and isinstance(body, dict) and "model" in body:
        # Generated names are models nobody serves (a 404 before anything else); the
        # server's own model takes the call through holds, the model and settlement.
        body["model"] = DEMO_MODEL
    try:
        case.call_and_validate(
            base_url=live[0].url,
            headers=identity.headers,
            checks=[not_a_server_error, response_schema_conformance],
            timeout=30,
        )
    except BaseException:
        # Schemathesis reports its findings as a group of failures, a BaseException.
        run_figures.failures[label] += 1
        raise
