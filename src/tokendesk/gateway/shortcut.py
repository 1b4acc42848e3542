"""Serves the gateway's metered APIs before the framework's routing and middleware.

The gateway is the product's hot path and needs none of what the routing stack
does per request (matching against every page's route, dependency solving,
exception middleware), which costs more than the gateway's own request handling
(see benchmarks/RESULTS.md). Each API's handler is the one its router declares
for the OpenAPI schema, so a call is served alike with or without the shortcut.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tokendesk.errors import AppError
from tokendesk.gateway import embeddings, messages, responses, routes, text_completions
from tokendesk.gateway.dialects import ErrorShape, anthropic_error, app_error, openai_error
from tokendesk.observability.context import note_route


@dataclass(frozen=True)
class Served:
    """One API the shortcut serves: its handler, and the error shape its clients read."""

    handler: Callable[[Request], Awaitable[Response]]
    error: ErrorShape


# By path (``POST`` only; anything else goes to the router, which answers 405).
SERVED = {
    "/v1/chat/completions": Served(routes.chat_completions, openai_error),
    "/v1/responses": Served(responses.create_response, openai_error),
    "/v1/completions": Served(text_completions.create_completion, openai_error),
    "/v1/embeddings": Served(embeddings.create_embeddings, openai_error),
    "/v1/messages": Served(messages.create_message, anthropic_error),
    "/v1/messages/count_tokens": Served(messages.count_tokens, anthropic_error),
}


class Shortcut:
    """Installed inside the application's outermost layers, so unhandled errors still
    become a 500 and the request body size limit still applies. Everything it does
    not serve passes straight through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        served = _served(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        if served is None:
            await self.app(scope, receive, send)
            return
        path, api = served
        note_route(scope, path)
        try:
            response = await api.handler(Request(scope, receive))
        except AppError as exc:
            response = app_error(api.error, exc)
        await response(scope, receive, send)


def _served(scope: Scope) -> tuple[str, Served] | None:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    api = SERVED.get(path)
    return None if api is None else (path, api)
