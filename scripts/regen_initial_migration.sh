#!/usr/bin/env bash
# Regenerates the single initial migration from the ORM models.
# Only valid while no release has shipped; afterwards add new revisions instead.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f src/tokendesk/migrations/versions/0001_initial.py /tmp/tokendesk-regen.db
.venv/bin/python - <<'PY'
from alembic import command
from tokendesk.migrations.runner import alembic_config
config = alembic_config("sqlite+aiosqlite:////tmp/tokendesk-regen.db")
command.revision(config, message="initial schema", autogenerate=True, rev_id="0001")
PY
mv src/tokendesk/migrations/versions/0001_initial_schema.py src/tokendesk/migrations/versions/0001_initial.py
.venv/bin/ruff format -q src/tokendesk/migrations/versions/0001_initial.py
.venv/bin/ruff check -q --fix src/tokendesk/migrations/versions/0001_initial.py || true
rm -f /tmp/tokendesk-regen.db
