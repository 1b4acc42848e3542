from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ReadyOut(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(
        description='Each check by name ("database", "schema", "events"): "ok", or why not'
    )
    failing: list[str] = Field(description="The checks that are not ok; empty when ready")
