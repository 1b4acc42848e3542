"""Domain errors: one base class, rendered by one handler."""

from __future__ import annotations

from pydantic import BaseModel, Field


class AppError(Exception):
    status_code = 400
    # Seconds a client should wait before trying again (a Retry-After header), if any.
    retry_after: float | None = None

    def __init__(self, message: str, status_code: int | None = None, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if status_code is not None:
            self.status_code = status_code


class NotFound(AppError):
    status_code = 404


class Conflict(AppError):
    """An invalid state transition or a duplicate."""

    status_code = 409


class Forbidden(AppError):
    status_code = 403


class Unauthorized(AppError):
    status_code = 401


class InsufficientTokens(AppError):
    """Too few tokens left; ``could_wait`` when tokens the member's calls in flight hold
    may come back and cover it (waiting can help), not when the balance is spent."""

    status_code = 402

    def __init__(self, shortfall: str, *, could_wait: bool = False) -> None:
        super().__init__(f"{shortfall}; ask for more with a token request")
        # What is missing, without the advice: a channel that offers its own way to ask
        # for more (the gateway's request link) words the advice itself.
        self.shortfall = shortfall
        self.could_wait = could_wait


class TooManyAttempts(AppError):
    """Too many wrong guesses at a password: the caller waits ``retry_after`` seconds."""

    status_code = 429
    retry_after: float

    def __init__(self, message: str, *, retry_after: float, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after


class InvalidInput(AppError):
    """Bad input that passed schema validation but breaks a rule; names the field."""

    status_code = 422


class FieldErrorOut(BaseModel):
    field: str
    message: str


class ErrorOut(BaseModel):
    """Every error's JSON body, whether schema validation or a rule refused the input."""

    detail: str = Field(description="One line: each failing field and its message.")
    errors: list[FieldErrorOut] = Field(
        default_factory=list, description="The failing fields, one entry each."
    )
