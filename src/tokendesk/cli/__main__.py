"""``python -m tokendesk.cli``: the same CLI as the ``tokendesk`` script."""

from tokendesk.cli import app

app()
