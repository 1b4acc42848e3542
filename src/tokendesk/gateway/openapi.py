"""How the OpenAPI description presents the gateway (``/v1``).

The gateway reads its body itself (it is served ahead of the framework's
routing, see :class:`gateway.Shortcut`), so the description is written here by
hand: what a chat client may send, and the shapes the gateway answers with.
Fields the gateway does not read (``temperature``, ``tools``, ...) pass through
to the upstream model, so the body allows any other property.
"""

from __future__ import annotations

from typing import Any

from tokendesk.gateway.model_config import APIS, MAX_N

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

# Where the member stands once the call's tokens are held (gateway/standing.py).
_STANDING_HEADERS = {
    "X-Tokendesk-Remaining": {
        "description": "Tokens left once this call's tokens are held.",
        "schema": {"type": "integer"},
    },
    "X-Tokendesk-Reset-At": {
        "description": "When the balance resets, ISO 8601 in UTC.",
        "schema": {"type": "string", "format": "date-time"},
    },
    "X-Tokendesk-Low-Balance": {
        "description": "`true` when under the organization's low-balance threshold.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "X-Tokendesk-Request-Link": {
        "description": "With the low-balance flag: the member's personal request page.",
        "schema": {"type": "string"},
    },
}

CHAT_COMPLETIONS_RESPONSES: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "The completion (or, with stream, its server-sent chunks).",
        "headers": _STANDING_HEADERS,
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

_TOKEN_IDS: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "items": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
}

EMBEDDINGS_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["model", "input"],
                "properties": {
                    "model": {
                        "type": "string",
                        "minLength": 1,
                        "description": "A model from GET /v1/models whose apis include embeddings.",
                    },
                    "input": {
                        "description": "What to embed; the call holds and pays for its "
                        "tokens (at most 2048 inputs and about 300,000 tokens per call).",
                        "anyOf": [
                            {"type": "string", "minLength": 1},
                            {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": 2048,
                                "items": {"type": "string", "minLength": 1},
                            },
                            _TOKEN_IDS,
                            {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": 2048,
                                "items": _TOKEN_IDS,
                            },
                        ],
                    },
                    "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                    "dimensions": {"type": "integer", "minimum": 1, "maximum": 65_536},
                },
                "additionalProperties": True,
            }
        }
    },
}


def _listing(item: dict[str, Any], **more: Any) -> dict[str, Any]:
    """OpenAI's list object: ``data`` of ``item``, with ``more`` properties beside it."""
    return {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["object", "data"],
                "properties": {
                    "object": {"type": "string", "enum": ["list"]},
                    "data": {"type": "array", "items": {"type": "object", **item}},
                    **more,
                },
            }
        }
    }


EMBEDDINGS_RESPONSES: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "One embedding per input, in order, and the usage the call paid for.",
        "headers": _STANDING_HEADERS,
        "content": _listing(
            {
                "required": ["index", "embedding"],
                "properties": {
                    "object": {"type": "string"},
                    "index": {"type": "integer"},
                    "embedding": {
                        "anyOf": [
                            {"type": "array", "items": {"type": "number"}},
                            {"type": "string"},
                        ]
                    },
                },
            },
            model={"type": "string"},
            usage={"type": "object"},
        ),
    },
    **_ERRORS,
}

RESPONSES_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["model"],
                "properties": {
                    "model": {
                        "type": "string",
                        "minLength": 1,
                        "description": "A model from GET /v1/models whose apis include responses.",
                    },
                    "input": {
                        "description": "A string, or a list of input items (messages with "
                        "text content parts, tool outputs, ...); required unless "
                        "previous_response_id, conversation or prompt is given.",
                        "anyOf": [
                            {"type": "string", "minLength": 1},
                            {"type": "array", "minItems": 1, "items": {"type": "object"}},
                        ],
                    },
                    "instructions": {"type": "string"},
                    "max_output_tokens": _MAX_TOKENS,
                    "stream": {"type": ["boolean", "null"], "default": False},
                    "background": {
                        "type": ["boolean", "null"],
                        "enum": [False, None],
                        "description": "Refused: a background response cannot be metered.",
                    },
                    "previous_response_id": {"type": "string"},
                    "tools": {"type": "array"},
                    "reasoning": {"type": "object"},
                },
                "additionalProperties": True,
            }
        }
    },
}

_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}

RESPONSES_RESPONSES: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "The response object (or, with stream, its server-sent events, "
        "usage in response.completed).",
        "headers": _STANDING_HEADERS,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["id", "object", "output"],
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"type": "string"},
                        "output": {"type": "array", "items": {"type": "object"}},
                        "usage": {"type": ["object", "null"]},
                    },
                }
            },
            "text/event-stream": {"schema": _SSE_EVENT},
        },
    },
    **_ERRORS,
}

COMPLETIONS_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["model", "prompt"],
                "properties": {
                    "model": {
                        "type": "string",
                        "minLength": 1,
                        "description": "A model from GET /v1/models whose apis include "
                        "completions.",
                    },
                    "prompt": {
                        "description": "A string, a list of strings, a list of token ids "
                        "or a list of lists of token ids.",
                        "anyOf": [
                            {"type": "string", "minLength": 1},
                            {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": MAX_N,
                                "items": {"type": "string", "minLength": 1},
                            },
                            _TOKEN_IDS,
                            {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": MAX_N,
                                "items": _TOKEN_IDS,
                            },
                        ],
                    },
                    "max_tokens": {**_MAX_TOKENS, "default": 16},
                    "n": {"type": "integer", "minimum": 1, "maximum": MAX_N, "default": 1},
                    "best_of": {"type": "integer", "minimum": 1, "maximum": 20},
                    "echo": {"type": "boolean"},
                    "stream": {"type": ["boolean", "null"], "default": False},
                    "stream_options": {"type": "object"},
                },
                "additionalProperties": True,
            }
        }
    },
}

# A text_completion object is shaped as a chat completion is, to this description.
COMPLETIONS_RESPONSES: dict[int | str, dict[str, Any]] = {
    **CHAT_COMPLETIONS_RESPONSES,
    "200": {
        **CHAT_COMPLETIONS_RESPONSES["200"],
        "description": "The text_completion object (or, with stream, its server-sent chunks).",
    },
}

MODELS_RESPONSES: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "The models this gateway serves.",
        "content": _listing(
            {
                "required": ["id", "object"],
                "properties": {
                    "id": {"type": "string"},
                    "object": {"type": "string"},
                    "created": {"type": "integer"},
                    "owned_by": {"type": "string"},
                    "demo": {"type": "boolean"},
                    "apis": {
                        "type": "array",
                        "items": {"type": "string", "enum": list(APIS)},
                        "description": "The APIs the model answers on: "
                        "a call on another is refused with a 400.",
                    },
                },
            }
        ),
    },
    "401": _ERRORS["401"],
}

BALANCE_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: _ERRORS[status] for status in ("400", "401", "403")
}

_ANTHROPIC_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"type": "string", "enum": ["error"]},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}

_ANTHROPIC_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": described["description"],
        "content": {"application/json": {"schema": _ANTHROPIC_ERROR}},
    }
    for status, described in _ERRORS.items()
}

# What an Anthropic Messages body must carry for tokendesk; every other field (system,
# tools, thinking, temperature, ...) passes through to the upstream.
_ANTHROPIC_MESSAGE: dict[str, Any] = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["user", "assistant"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
    },
}


def _anthropic_body(*, counting: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "model": {
            "type": "string",
            "minLength": 1,
            "description": "A model from GET /v1/models whose apis include messages.",
        },
        "messages": {"type": "array", "minItems": 1, "items": _ANTHROPIC_MESSAGE},
        "system": {"anyOf": [{"type": "string"}, {"type": "array"}]},
    }
    if not counting:
        properties["max_tokens"] = {
            "type": "integer",
            "minimum": 1,
            "description": "The most the reply may use, at most the model's "
            "max_output_tokens: held whole when the balance covers it, else what it "
            "covers down to the gateway's floor; the upstream gets what was held for.",
        }
        properties["stream"] = {"type": "boolean", "default": False}
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["model", "messages"] + ([] if counting else ["max_tokens"]),
                    "properties": properties,
                    "additionalProperties": True,
                }
            }
        },
    }


MESSAGES_BODY = _anthropic_body(counting=False)
COUNT_TOKENS_BODY = _anthropic_body(counting=True)

MESSAGES_RESPONSES: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "The message (or, with stream, Anthropic's server-sent events).",
        "headers": _STANDING_HEADERS,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["id", "type", "role", "content"],
                    "properties": {
                        "id": {"type": "string"},
                        "type": {"type": "string"},
                        "role": {"type": "string"},
                        "model": {"type": "string"},
                        "content": {"type": "array", "items": {"type": "object"}},
                        "stop_reason": {"type": ["string", "null"]},
                        "usage": {"type": "object"},
                    },
                }
            },
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
                }
            },
        },
    },
    **_ANTHROPIC_ERRORS,
}

COUNT_TOKENS_RESPONSES: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "The input tokens the call would bill; counting is free.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["input_tokens"],
                    "properties": {"input_tokens": {"type": "integer", "minimum": 0}},
                }
            }
        },
    },
    **_ANTHROPIC_ERRORS,
}
