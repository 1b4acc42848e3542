"""The typed outcome of a shortcut that did not do the work: :data:`FALLBACK`.

A shortcut (SQLite's quick path, a hold strategy) returns ``FALLBACK`` where it
ran nothing, or undid what it ran, and the caller then takes the path it falls
back to. Being its own type, it cannot be mistaken for a result, so the work a
shortcut runs may return anything, None included.
"""

from __future__ import annotations

from typing import Final, final


@final
class Fallback:
    """The type of :data:`FALLBACK`; test with ``is FALLBACK`` or ``isinstance``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FALLBACK"


FALLBACK: Final = Fallback()
