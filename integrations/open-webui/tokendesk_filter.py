"""
title: tokendesk balance
author: tokendesk
version: 1.0.0
license: MIT
description: Shows the user's tokendesk balance after each reply, and the link to ask for more.
requirements: httpx
"""

# Paste this whole file into Open WebUI: Admin Panel → Functions → New Function, save it,
# set its valves (the tokendesk address and the integration key Open WebUI's connection
# uses), switch it on and make it global (or attach it to the models that go through
# tokendesk). It only reads: the balance endpoint bills nobody.
#
# It names the user to tokendesk exactly as Open WebUI's forwarded headers do, so the
# balance shown is the one the chat calls are billed to. Whatever goes wrong (tokendesk
# unreachable, slow, a refused key), the reply is left as it was and nothing is shown.

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

Emitter = Callable[[dict[str, Any]], Awaitable[Any]]

BALANCE_PATH = "/v1/tokendesk/balance"


class Filter:
    class Valves(BaseModel):
        tokendesk_url: str = Field(
            default="http://tokendesk:8000",
            description="tokendesk's address as Open WebUI reaches it (without /v1)",
        )
        integration_key: str = Field(
            default="",
            description="the tdi_... integration key of Open WebUI's tokendesk connection",
        )
        timeout_seconds: float = Field(
            default=2.0, description="give up on tokendesk after this long; the reply stays"
        )
        show_status: bool = Field(
            default=True, description="show 'N tokens left · resets <date>' under each reply"
        )
        low_text: str = Field(
            default="You are running low on tokens.",
            description="the warning under the organization's low-balance threshold",
        )
        empty_text: str = Field(
            default="You have no tokens left until the next reset.",
            description="the warning when nothing is left",
        )
        link_text: str = Field(default="Ask for more tokens", description="the request link's text")
        add_link_to_reply: bool = Field(
            default=True,
            description="when low or empty, also add the request link under the reply",
        )
        priority: int = Field(default=0, description="the filter's place among filters")

    def __init__(self) -> None:
        self.valves = self.Valves()

    async def outlet(
        self,
        body: dict[str, Any],
        __user__: dict[str, Any] | None = None,
        __event_emitter__: Emitter | None = None,
    ) -> dict[str, Any]:
        balance = await self.balance(__user__)
        if balance is None:
            return body
        try:
            for event in self.events(balance):
                if __event_emitter__ is not None:
                    await __event_emitter__(event)
            if self.valves.add_link_to_reply and balance_is_low(balance):
                add_to_reply(body, self.link_line(balance))
        except Exception:
            # Open WebUI's emitter or an unexpected reply shape: never the chat's problem.
            log.warning("tokendesk filter: could not show the balance", exc_info=True)
        return body

    async def balance(self, user: dict[str, Any] | None) -> dict[str, Any] | None:
        """The user's balance from tokendesk, or None when it cannot be had quickly."""
        if not user or not user.get("id") or not self.valves.integration_key:
            return None
        url = self.valves.tokendesk_url.rstrip("/") + BALANCE_PATH
        try:
            async with httpx.AsyncClient(timeout=self.valves.timeout_seconds) as client:
                response = await client.get(url, headers=self.headers(user))
            if response.status_code != 200:
                log.warning(
                    "tokendesk filter: %s answered %d: %s",
                    url,
                    response.status_code,
                    response.text[:200],
                )
                return None
            data = response.json()
        except Exception as exc:
            log.warning("tokendesk filter: %s unreachable (%s)", url, type(exc).__name__)
            return None
        return data if isinstance(data, dict) and isinstance(data.get("remaining"), int) else None

    def headers(self, user: dict[str, Any]) -> dict[str, str]:
        """The headers Open WebUI forwards with ENABLE_FORWARD_USER_INFO_HEADERS=true."""
        headers = {
            "Authorization": f"Bearer {self.valves.integration_key}",
            "X-OpenWebUI-User-Id": str(user["id"]),
        }
        if user.get("email"):
            headers["X-OpenWebUI-User-Email"] = str(user["email"]).lower()
        if user.get("name"):
            headers["X-OpenWebUI-User-Name"] = quote(str(user["name"]))
        if user.get("role"):
            headers["X-OpenWebUI-User-Role"] = str(user["role"])
        return headers

    def events(self, balance: dict[str, Any]) -> list[dict[str, Any]]:
        """The status line, and under the threshold a warning that carries the link."""
        events: list[dict[str, Any]] = []
        remaining = max(balance["remaining"], 0)
        if self.valves.show_status:
            line = f"{remaining:,} tokens left · resets {reset_date(balance)}"
            events.append({"type": "status", "data": {"description": line, "done": True}})
        if balance_is_low(balance):
            text = self.valves.empty_text if remaining <= 0 else self.valves.low_text
            events.append(
                {
                    "type": "notification",
                    "data": {
                        "type": "warning",
                        "content": f"{text} {self.valves.link_text}: {balance['request_link']}",
                    },
                }
            )
        return events

    def link_line(self, balance: dict[str, Any]) -> str:
        remaining = max(balance["remaining"], 0)
        text = self.valves.empty_text if remaining <= 0 else self.valves.low_text
        return f"\n\n---\n{text} [{self.valves.link_text}]({balance['request_link']})"


def balance_is_low(balance: dict[str, Any]) -> bool:
    return bool(balance.get("low")) and bool(balance.get("request_link"))


def reset_date(balance: dict[str, Any]) -> str:
    """The reset's date on the organization's calendar, e.g. 'Jan 1, 2027'."""
    try:
        moment = datetime.fromisoformat(str(balance["reset_at"]).replace("Z", "+00:00"))
        moment = moment.astimezone(ZoneInfo(str(balance.get("timezone") or "UTC")))
    except (KeyError, ValueError):
        return str(balance.get("reset_at", "?"))
    return f"{moment:%b} {moment.day}, {moment.year}"


def add_to_reply(body: dict[str, Any], text: str) -> None:
    """Append ``text`` to the last assistant message Open WebUI hands the outlet."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "assistant":
            if isinstance(message.get("content"), str):
                message["content"] += text
            return
