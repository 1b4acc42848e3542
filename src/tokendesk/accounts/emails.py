"""The one rule for an email address, wherever one enters tokendesk.

Users are created and found by email from the API, the CLI, the admin center,
the sign-in form, chat apps (by their headers or a token) and single sign-on.
Each takes the address through :func:`normalize_email` (or :data:`Email` in a
schema), so an address accepted in one place is accepted, and stored the same
way, in all of them.

What counts as an address is syntax only: a local part, one ``@`` and a domain.
tokendesk never sends mail to it; it is a name for a person that another system
handed over. Chat apps and directories inside a company use domains no public
mail system would (``corp.local``, ``acme.internal``, a bare ``localhost``), so
special-use, reserved and dot-less domains are all accepted; what is refused is
text that cannot be an address at all.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

# The longest address SMTP can carry (a 256-octet path less its angle brackets);
# the local part and each domain label have their own limits from the same RFCs.
MAX_EMAIL = 254
MAX_LOCAL = 64
MAX_LABEL = 63

# A dot-atom local part (RFC 5322): these ASCII characters, or any non-ASCII one
# (RFC 6531), in runs separated by single dots. Quoted local parts (``"a b"@x``)
# are refused: no directory hands them over, and they would let spaces in.
_LOCAL_RUN = re.compile(r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+")
# A domain label: letters, digits and inner hyphens, or any non-ASCII character for
# an internationalized domain.
_LABEL_CHAR = r"[A-Za-z0-9]|[^\x00-\x7f]"
_LABEL = re.compile(rf"(?:{_LABEL_CHAR})(?:(?:{_LABEL_CHAR}|-)*(?:{_LABEL_CHAR}))?")


class BadEmail(ValueError):
    """Why a text is not an email address, in words for the person who typed it."""


def email_problem(value: str) -> str | None:
    """What is wrong with ``value`` as an address (already stripped), or None."""
    if not value:
        return "must not be blank"
    if len(value) > MAX_EMAIL:
        return f"at most {MAX_EMAIL} characters"
    if any(char.isspace() or not char.isprintable() for char in value):
        return "must not contain spaces or control characters"
    local, at, domain = value.rpartition("@")
    if not at:
        return "an email address needs an @ and a domain after it"
    if not local:
        return "an email address needs something before the @"
    if not domain:
        return "an email address needs a domain after the @"
    if "@" in local:
        return "an email address has only one @"
    if len(local) > MAX_LOCAL:
        return f"the part before the @ has at most {MAX_LOCAL} characters"
    if not all(_LOCAL_RUN.fullmatch(run) for run in local.split(".")):
        return "the part before the @ has a character or a dot an address cannot have there"
    labels = domain.split(".")
    if any(len(label) > MAX_LABEL for label in labels):
        return f"each part of the domain has at most {MAX_LABEL} characters"
    if not all(_LABEL.fullmatch(label) for label in labels):
        return "the domain has a character, a hyphen or a dot a domain cannot have there"
    return None


def email_key(value: str) -> str:
    """The form ``value`` is stored, compared and looked up in, without judging it:
    a lookup by a text that is no address simply finds nobody."""
    return value.strip().lower()


def normalize_email(value: str) -> str:
    """``value`` as tokendesk stores and compares it, or :class:`BadEmail`.

    The whole address is lower-cased. The local part may be case-sensitive by
    the letter of RFC 5321, but no mail system in use treats ``Ann`` and ``ann``
    as two people, while chat apps and directories do send one person's address
    in different cases. One stored form lets the database's unique constraint
    and a plain equality lookup (which can use its index) decide who is who.
    """
    problem = email_problem(value.strip())
    if problem is not None:
        raise BadEmail(problem)
    return email_key(value)


def _checked(value: str) -> str:
    try:
        return normalize_email(value)
    except BadEmail as exc:
        raise PydanticCustomError("email", str(exc)) from None


# An email field of a request body: checked and normalized by the rule above.
Email = Annotated[str, AfterValidator(_checked)]
