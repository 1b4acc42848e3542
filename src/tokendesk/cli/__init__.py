"""The operator CLI: thin commands over the same services the API uses.

Each command opens the configured database, does its work in one unit of work
(``Database.transaction``) and disposes of the engine. Domain errors end the
command with a one-line message on stderr and exit status 1; usage errors
(an unknown option, a missing argument) exit with status 2, as is usual.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tokendesk import __version__
from tokendesk.cli import accounts, backups, operations

app = typer.Typer(
    name="tokendesk",
    help="Operate tokendesk: serve the app, migrate the database, manage organizations, "
    "teams, users, API keys and integrations. Settings come from TOKENDESK_* environment "
    "variables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(operations.serve)
app.command()(operations.demo)
app.command()(operations.doctor)
app.command()(backups.backup)
app.command()(backups.restore)
app.add_typer(operations.db_app, name="db")
app.add_typer(operations.reset_app, name="reset")
app.add_typer(accounts.org_app, name="org")
app.add_typer(accounts.team_app, name="team")
app.add_typer(accounts.user_app, name="user")
app.add_typer(accounts.apikey_app, name="apikey")
app.add_typer(accounts.integration_app, name="integration")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tokendesk {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Operate tokendesk."""
