"""tokendesk: a self-hosted token-budget desk for organisations that run an AI chat app."""

__version__ = "0.1.0"
