"""How the OpenAPI description presents the gateway (``/v1``).

The gateway reads its body itself (it is served ahead of the framework's
routing, see :class:`gateway.Shortcut`), so the description is written here by
hand: what a chat client may send, and the shapes the gateway answers with.
Fields the gateway does not read (``temperature``, ``tools``, ...) pass through
to the upstream model, so the body allows any other property.
"""

from __future__ import annotations

from typing import Any

from tokendesk.gateway.model_config import MAX_N

_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_MESSAGE: dict[str, Any] = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "text"],
                        "properties": {
                            "type": {"type": "string", "enum": ["text"]},
                            "text": {"type": "string"},
                        },
                    },
                },
            ]
        },
        "name": {"type": "string"},
    },
}

_MAX_TOKENS: dict[str, Any] = {
    "type": "integer",
    "minimum": 1,
    "description": "Lowers the completion budget tokendesk sets (and holds) for the call; "
    "at most the model's max_output_tokens (400 past it).",
}

CHAT_COMPLETIONS_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["model", "messages"],
                "properties": {
                    "model": {
                        "type": "string",
                        "minLength": 1,
                        "description": "A model from GET /v1/models.",
                    },
                    "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
                    "max_tokens": _MAX_TOKENS,
                    "max_completion_tokens": {
                        **_MAX_TOKENS,
                        "description": "Takes precedence over max_tokens.",
                    },
                    "n": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_N,
                        "default": 1,
                        "description": "Choices per call, where the model allows more than one.",
                    },
                    "stream": {"type": ["boolean", "null"], "default": False},
                    "stream_options": {"type": "object"},
                },
                "additionalProperties": True,
            }
        }
    },
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": {"application/json": {"schema": _ERROR}}}
    for status, description in {
        "400": "A body the gateway cannot use; the message names the field.",
        "401": "No key, or an invalid or revoked one.",
        "403": "Not allowed (a missing CSRF token, or speaking for another user).",
        "404": "No such model.",
        "429": "Not enough tokens left; the message says how to ask for more.",
    }.items()
}

CHAT_COMPLETIONS_RESPONSES: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "The completion (or, with stream, its server-sent chunks).",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["id", "object", "choices"],
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"type": "string"},
                        "created": {"type": "integer"},
                        "model": {"type": "string"},
                        "choices": {"type": "array", "items": {"type": "object"}},
                        "usage": {"type": "object"},
                    },
                }
            },
            # One server-sent event: a chunk's JSON in ``data``, and ``[DONE]`` last.
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {"type": "string"},
                        "event": {"type": "string"},
                        "id": {"type": "string"},
                        "retry": {"type": "integer"},
                    },
                }
            },
        },
    },
    **_ERRORS,
}

MODELS_RESPONSES: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "The models this gateway serves.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["object", "data"],
                    "properties": {
                        "object": {"type": "string", "enum": ["list"]},
                        "data": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["id", "object"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "object": {"type": "string"},
                                    "created": {"type": "integer"},
                                    "owned_by": {"type": "string"},
                                    "demo": {"type": "boolean"},
                                },
                            },
                        },
                    },
                }
            }
        },
    },
    "401": _ERRORS["401"],
}
