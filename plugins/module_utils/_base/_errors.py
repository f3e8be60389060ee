# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: the collection's typed errors and how they read; no stable interface.
"""Exceptions shared by every nixforge.images module, and how they read.

Every failure a user sees has the same shape::

    <what> failed: <reason>. <how to fix>

``what`` names the action or the parameter, ``reason`` is what went wrong and
``hint`` says what to change. Modules raise these exceptions from their logic; the
module base class (``common.NixforgeModule``) turns them into ``fail_json``.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, Optional

__all__ = [
    "NixforgeError",
    "ProviderError",
    "UserInputError",
    "WaitTimeout",
    "format_error",
    "redact",
    "require_token",
]


def _sentence(text: str) -> str:
    text = text.strip()
    if text and text[-1] not in ".!?":
        text += "."
    return text


def format_error(what: str, reason: str, hint: Optional[str] = None) -> str:
    """Return ``"<what> failed: <reason>. <hint>"`` with tidy punctuation."""
    message = "%s failed: %s" % (what.strip() or "Operation", _sentence(reason) or "unknown error.")
    if hint:
        message += " " + _sentence(hint)
    return message


class NixforgeError(Exception):
    """Base class: a failure with a reason (``msg``) and a fix (``hint``).

    ``what`` is the failed action ("Launching the EC2 fleet") or, for bad input, the
    parameter ("Parameter 'ssh_cidr'"). ``code`` is the provider's error code when one
    caused it. ``details`` end up in the module result next to
    ``msg`` (for example an error code or the resources involved).
    """

    default_what = "Operation"

    def __init__(
        self,
        msg: str,
        hint: Optional[str] = None,
        what: Optional[str] = None,
        code: Optional[str] = None,
        **details: Any,
    ) -> None:
        super().__init__(msg)
        self.msg = msg
        self.hint = hint
        self.what = what or self.default_what
        self.code = code
        self.details: Dict[str, Any] = details

    def format(self) -> str:
        return format_error(self.what, self.msg, self.hint)

    def add_hint(self, text: str) -> None:
        """Append a sentence to the hint (for example what a rollback removed)."""
        self.hint = (self.hint.rstrip(".") + ". " if self.hint else "") + text

    def __str__(self) -> str:
        return self.format()


class UserInputError(NixforgeError):
    """The user's input is wrong; nothing was (or should be) created. Never retried."""

    def __init__(
        self,
        msg: str,
        hint: Optional[str] = None,
        parameter: Optional[str] = None,
        what: Optional[str] = None,
        **details: Any,
    ) -> None:
        if what is None and parameter:
            what = "Parameter '%s'" % parameter
        super().__init__(msg, hint=hint, what=what or "Input validation", **details)
        self.parameter = parameter


def require_token(token: Optional[str], parameter: str, env_names: Iterable[str]) -> str:
    """``token``; a UserInputError naming ``parameter`` and its environment variables when it is empty."""
    if not token:
        raise UserInputError(
            "no API token given",
            hint="Set '%s' or one of the environment variables %s" % (parameter, ", ".join(env_names)),
            parameter=parameter,
        )
    return token


class ProviderError(NixforgeError):
    """The cloud provider refused or failed a call.

    ``code`` is the provider's error code (``InsufficientInstanceCapacity``), ``status``
    the HTTP status when known and ``retryable`` whether retrying could help.
    """

    def __init__(
        self,
        msg: str,
        hint: Optional[str] = None,
        what: Optional[str] = None,
        code: Optional[str] = None,
        status: Optional[int] = None,
        retryable: bool = False,
        **details: Any,
    ) -> None:
        super().__init__(msg, hint=hint, what=what or "Provider call", code=code, **details)
        self.status = status
        self.retryable = retryable


class WaitTimeout(NixforgeError):
    """A wait ran out of time. Modules fail on it; they never downgrade it to a warning.

    ``option_value`` is the option's setting when the wait had only part of it left (a
    second wait sharing one deadline); the message quotes it so the user tunes the right
    number.
    """

    def __init__(
        self,
        awaited: str,
        timeout: float,
        last_state: Any = None,
        option: str = "wait_timeout",
        hint: Optional[str] = None,
        option_value: Optional[float] = None,
    ) -> None:
        reason = "timed out after %ss; last observed state: %s" % (_num(timeout), _state(last_state))
        tune = "Raise the '%s' option (currently %s seconds) if the provider is just slow" % (
            option,
            _num(timeout if option_value is None else option_value),
        )
        super().__init__(
            reason, hint="%s %s" % (_sentence(hint), tune) if hint else tune, what="Waiting for " + awaited
        )
        self.awaited = awaited
        self.timeout = timeout
        self.last_state = last_state
        self.option = option


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else "%.1f" % value


def _state(value: Any) -> str:
    if value is None:
        return "nothing observed yet"
    text = str(value)
    return text if len(text) <= 300 else text[:297] + "..."


# Patterns for secrets that may show up in provider messages even when we do not know
# their value (the module's own no_log values are removed by Ansible itself).
_PATTERNS = [
    # PEM / OpenSSH private key blocks
    (
        re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|$)", re.S),
        "-----BEGIN PRIVATE KEY----- ******** -----END PRIVATE KEY-----",
    ),
    # HTTP bearer tokens
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1********"),
    # key=value / key: value pairs whose key says secret/token/password
    (
        re.compile(
            r"(?i)((?:aws_)?(?:secret(?:_access)?_key|session_token|security_token|password|passwd|token|"
            r"authorization|api_key|application_key|auth_token)[\"']?\s*[:=]\s*[\"']?)([^\s\"',;}]+)"
        ),
        r"\1********",
    ),
]


def redact(text: Any, secrets: Iterable[Optional[str]] = ()) -> str:
    """Return ``text`` with known secret values and secret-looking fragments masked.

    ``secrets`` are exact values to mask (credentials the module holds); short values
    (under 4 characters) are left alone, masking them would garble the message.
    """
    result = str(text)
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        result = result.replace(secret, "********")
    for pattern, replacement in _PATTERNS:
        result = pattern.sub(replacement, result)
    return result
