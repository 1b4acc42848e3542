"""The notification worker draining a bulk approval's outbox to a local SMTP server
(aiosmtpd) and a local webhook receiver (aiohttp), both on 127.0.0.1.

N members each have a pending request; one bulk approval decides them all, which
queues N emails (one per requester) and N webhook posts (the organization's one
webhook). One worker then drains the outbox; the figure is notifications delivered
per second, from its first claim to its last record. Run:
    .venv/bin/python benchmarks/bench_notify_drain.py [--size 10000]
Set TOKENDESK_BENCH_PG_URL (its public schema is wiped) to add PostgreSQL.
The receivers run on the same machine and, the webhook receiver, in the same
process: their work is counted in the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.notifications.receivers import http_receiver, smtp_server

from benchmarks.common import machine, reset_postgres, sqlite_url


async def run(url: str, size: int) -> tuple[float, int, int, int]:
    from benchmarks.bench_bulk_approve import load
    from tokendesk.accounts.actor import Actor
    from tokendesk.accounts.models import Role, User
    from tokendesk.config import Settings
    from tokendesk.db import Database
    from tokendesk.notifications import channels
    from tokendesk.notifications.models import Notification
    from tokendesk.notifications.schemas import WebhookIn
    from tokendesk.notifications.worker import NotificationWorker
    from tokendesk.token_requests import bulk

    _, ids = await load(url, size)
    database = Database(url)
    with smtp_server() as mailbox:
        async with http_receiver() as receiver:
            async with database.transaction() as s:
                admin = await s.scalar(select(User).where(User.role == Role.ORG_ADMIN.value))
                assert admin is not None
                actor = Actor(
                    user_id=admin.id,
                    email=admin.email,
                    name=admin.name,
                    role=Role.ORG_ADMIN,
                    organization_id=admin.organization_id,
                    home_organization_id=admin.organization_id,
                    team_id=None,
                )
                data = WebhookIn(name="hook", url=receiver.url("/hook"))
                _, secret = await channels.create_webhook(s, actor=actor, data=data)
            receiver.secrets["/hook"] = secret
            async with database.transaction() as s:
                await bulk.bulk(s, actor=actor, action="approve", ids=ids)
            async with database.transaction(write=False) as s:
                queued = int(await s.scalar(select(func.count()).select_from(Notification)) or 0)
            settings = Settings(
                database_url=url,
                demo=True,
                secret_key="x" * 32,
                smtp_host=mailbox.host,
                smtp_port=mailbox.port,
                smtp_security="none",
                smtp_from="desk@bench.example",
            )
            worker = NotificationWorker(settings, database)
            started = time.perf_counter()
            result = await worker.drain(max_ticks=10 * queued // settings.notify_batch_size + 10)
            seconds = time.perf_counter() - started
            await worker.close()
            mails, posts = len(mailbox.mails), len(receiver.posts)
            assert result.sent == queued, (result, queued)
            assert all(p.signed for p in receiver.posts)
    await database.dispose()
    return seconds, queued, mails, posts


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=10_000)
    args = parser.parse_args()
    backends = [("SQLite", None)]
    if os.environ.get("TOKENDESK_BENCH_PG_URL"):
        backends.append(("PostgreSQL", os.environ["TOKENDESK_BENCH_PG_URL"]))
    print(f"Machine: {machine()}\n")
    print("| backend | notifications | emails | webhook posts | drain (s) | per second |")
    print("|---|---|---|---|---|---|")
    for label, pg in backends:
        if pg:
            await reset_postgres(pg)
        url = pg or sqlite_url()
        seconds, queued, mails, posts = await run(url, args.size)
        print(
            f"| {label} | {queued:,} | {mails:,} | {posts:,} | {seconds:.2f} "
            f"| {queued / seconds:,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
