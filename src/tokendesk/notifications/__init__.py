"""Notifications: an outbox written in the transaction of what caused it, delivered by
a worker in the server over email (SMTP) and webhooks (generic JSON, Slack, Teams)."""
