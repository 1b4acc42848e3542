"""Turning submitted HTML forms into the services' input models.

Browsers send every value as text; the services' schemas are strict about
types. These helpers convert what clearly is a number and pass anything else
through unchanged, so the schema's own message names the field.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from tokendesk.bounds import parse_count
from tokendesk.errors import AppError
from tokendesk.web.admin.common import field_errors

M = TypeVar("M", bound=BaseModel)


def number(raw: str | None) -> int | str | None:
    """'' → None (cleared); '12,000' → 12000; anything else stays text for the schema to refuse."""
    text = (raw or "").strip()
    if not text:
        return None
    number = signed_number(text)
    return text if number is None else number


def signed_number(text: str) -> int | None:
    """'-12,000' → -12000: ASCII digits only, with an optional sign and separators.

    Too long for any bound the schemas allow is left for them to refuse by name.
    """
    compact = text.strip().replace(",", "").replace("_", "").replace(" ", "")
    sign = -1 if compact[:1] == "-" else 1
    magnitude = parse_count(compact[1:] if compact[:1] in ("+", "-") else compact)
    return None if magnitude is None else sign * magnitude


class FormError(Exception):
    """A form the services refused, with a message per field."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def build(model: type[M], values: dict[str, Any]) -> M:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise FormError(field_errors(exc)) from None


def errors_of(exc: AppError | FormError) -> dict[str, str]:
    if isinstance(exc, FormError):
        return exc.errors
    return field_errors(exc)
