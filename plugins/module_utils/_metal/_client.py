# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: the Metal client (packet-python behind one door); no stable interface.
"""packet-python behind one door: client, retries, errors, tags.

Equinix Metal (ex-Packet) was sunset on 2026-06-30. The API base URL is a parameter so
that Metal-compatible endpoints (and the sandbox emulator) keep working.

    client = metal_client(module.params)               # UserInputError on bad input
    plans = client.call("plans", what="Listing plans")["plans"]
    devices = client.paginate("projects/%s/devices" % project, "devices", tag=tag)

packet-python is used for the transport (``Manager.call_api``: HTTPS, auth header,
Metal's error bodies) but not for its object layer: ``Manager.create_device`` only
sends ``termination_time`` for spot instances and sends ``tags``/``features`` as
dicts, so requests are built here. Calls are retried with ``retry.call_with_retry`` on
HTTP 429, 5xx and dropped connections; packet-python has no retries of its own.
"""

from __future__ import annotations

import os
import re
import traceback
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional
from urllib.parse import quote

from ansible.module_utils.basic import env_fallback
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import (
    NixforgeError,
    ProviderError,
    UserInputError,
    require_token,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._requests import CONNECTION_ERRORS
from ansible_collections.nixforge.images.plugins.module_utils._base._retry import CLOUD_API_POLICY as DEFAULT_POLICY
from ansible_collections.nixforge.images.plugins.module_utils._base._retry import (
    RetryingClient,
    RetryPolicy,
    find_before_retry,
    is_retryable_http_status,
)

try:
    import packet
    from packet.baseapi import Error as PacketError

    HAS_PACKET = True
    PACKET_IMPORT_ERROR: Optional[str] = None
except ImportError:  # pragma: no cover - exercised only without packet-python
    HAS_PACKET = False
    PACKET_IMPORT_ERROR = traceback.format_exc()
    PacketError = Exception  # type: ignore[misc,assignment]

__all__ = [
    "DEFAULT_API_URL",
    "HAS_PACKET",
    "REQUIRED_LIBRARIES",
    "MetalClient",
    "is_retryable_metal_error",
    "metal_argument_spec",
    "metal_client",
    "normalize_api_url",
    "tag_dict",
    "tag_list",
]

REQUIRED_LIBRARIES = [("packet-python", HAS_PACKET, PACKET_IMPORT_ERROR)]
DEFAULT_API_URL = "api.equinix.com/metal/v1"
TOKEN_ENV = ("METAL_AUTH_TOKEN", "PACKET_AUTH_TOKEN")
PER_PAGE = 100


def metal_argument_spec() -> Dict[str, Any]:
    """Options of ``doc_fragments/metal.py`` (keep both in step)."""
    return dict(
        api_url=dict(type="str", default=DEFAULT_API_URL, fallback=(env_fallback, ["METAL_API_URL"])),
        auth_token=dict(type="str", no_log=True, aliases=["api_token"], fallback=(env_fallback, list(TOKEN_ENV))),
        project_id=dict(type="str", fallback=(env_fallback, ["METAL_PROJECT_ID"])),
        ca_bundle=dict(type="path"),
    )


def normalize_api_url(value: Optional[str]) -> str:
    """packet-python wants ``host[:port][/base/path]``: it prepends ``https://`` itself."""
    text = (value or DEFAULT_API_URL).strip()
    if text.startswith("http://"):
        raise UserInputError(
            "%r uses plain http, but the Metal client only speaks https" % text,
            hint="Use an https endpoint, for example 'https://api.equinix.com/metal/v1'",
            parameter="api_url",
        )
    if text.startswith("https://"):
        text = text[len("https://") :]
    text = text.rstrip("/")
    if not text or "://" in text or not re.match(r"^[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~\-/]*)?$", text):
        raise UserInputError(
            "%r is not a host with an optional path" % (value,),
            hint="Write it like 'api.equinix.com/metal/v1' or 'https://metal.example.com:8443/metal/v1'",
            parameter="api_url",
        )
    return text


# -- errors ------------------------------------------------------------------------


def metal_error_status(exc: BaseException) -> Optional[int]:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if status is not None else None


def metal_error_message(exc: BaseException) -> str:
    """The text of Metal's ``{"errors": [...]}`` / ``{"error": ...}`` body, else the exception."""
    response = getattr(exc, "response", None)
    if response is not None:
        try:
            body = response.json()
        except Exception:  # noqa: BLE001 - any undecodable body falls back to the exception text
            body = None
        if isinstance(body, Mapping):
            if body.get("errors"):
                return "; ".join(str(e) for e in body["errors"])
            if body.get("error"):
                return str(body["error"])
    text = str(exc)
    return re.sub(r"^Error \d+: ", "", text)


def _is_connection_error(exc: BaseException) -> bool:
    cause = getattr(exc, "cause", None)
    return bool(CONNECTION_ERRORS) and (isinstance(exc, CONNECTION_ERRORS) or isinstance(cause, CONNECTION_ERRORS))


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else text


def is_retryable_metal_error(exc: BaseException) -> bool:
    """Retry classifier: HTTP 408/429/5xx and dropped connections; never other 4xx."""
    if _is_connection_error(exc):
        return True
    return is_retryable_http_status(metal_error_status(exc))


def translate_metal_error(exc: BaseException, what: str, parameter: Optional[str] = None) -> NixforgeError:
    status = metal_error_status(exc)
    message = metal_error_message(exc)
    if _is_connection_error(exc):
        cause = getattr(exc, "cause", None) or exc
        text = str(cause)
        if "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in type(cause).__name__:
            return UserInputError(
                "the TLS certificate of the Metal API was not trusted (%s)" % text,
                hint="Check 'api_url'; for a private endpoint give its CA in 'ca_bundle' (or REQUESTS_CA_BUNDLE)",
                parameter="api_url",
                what=what,
            )
        return ProviderError(
            "the Metal API did not answer (%s)" % text,
            hint="Check 'api_url' and the network",
            what=what,
            retryable=True,
        )
    if status == 401:
        return UserInputError(
            "the Metal API refused the token (HTTP 401: %s; %s)" % (message, _lower_first(what)),
            hint="Check 'auth_token' (or %s) and 'api_url'" % " / ".join(TOKEN_ENV),
            parameter="auth_token",
            status=status,
        )
    if status == 403:
        return UserInputError(
            "the token may not do this (HTTP 403: %s; %s)" % (message, _lower_first(what)),
            hint="Use a token with access to 'project_id', or check 'project_id'",
            parameter="auth_token",
            status=status,
        )
    if status is not None and is_retryable_http_status(status):
        return ProviderError(
            "HTTP %d: %s" % (status, message),
            hint="The Metal API kept throttling or failing after retries; try again later",
            what=what,
            status=status,
            retryable=True,
        )
    if status is not None and 400 <= status < 500:
        return UserInputError(
            "HTTP %d: %s" % (status, message),
            hint=("Check the parameter '%s'" % parameter) if parameter else "Check the parameters named in the message",
            parameter=parameter,
            what=what,
            status=status,
        )
    return ProviderError("%s%s" % ("HTTP %d: " % status if status else "", message), what=what, status=status)


# -- client ------------------------------------------------------------------------


class MetalClient(RetryingClient):
    """A packet-python Manager whose calls retry with our policy and raise ``NixforgeError``."""

    def __init__(
        self,
        manager: Any,
        policy: Optional[RetryPolicy] = None,
        secrets: Iterable[Optional[str]] = (),
        sleep: Optional[Callable[[float], None]] = None,
    ) -> None:
        self.manager = manager
        super().__init__(policy or DEFAULT_POLICY, secrets, sleep)

    def call_raw(self, path: str, method: str = "GET", params: Optional[Mapping[str, Any]] = None) -> Any:
        """Call with retries but without translating the final error."""
        return self._with_retry(self.manager.call_api, is_retryable_metal_error, path, method, dict(params or {}))

    def call(
        self,
        path: str,
        method: str = "GET",
        params: Optional[Mapping[str, Any]] = None,
        what: Optional[str] = None,
        parameter: Optional[str] = None,
        missing_ok: bool = False,
    ) -> Any:
        """One API call; with ``missing_ok`` a 404 returns ``None``."""
        return self._guarded(
            lambda: self.call_raw(path, method, params), what or "Metal %s %s" % (method, path), parameter, missing_ok
        )

    def create_idempotent(
        self,
        path: str,
        params: Mapping[str, Any],
        find: Callable[[], Optional[Dict[str, Any]]],
        what: str,
        parameter: Optional[str] = None,
    ) -> Dict[str, Any]:
        """POST with retries; before each retry, ``find()`` what an earlier attempt may have created
        (by the build's tags: a second device would be a leak)."""
        attempt = find_before_retry(lambda: self.manager.call_api(path, "POST", dict(params)), find)
        return self._guarded(lambda: self._with_retry(attempt, is_retryable_metal_error), what, parameter)

    def _guarded(
        self, call: Callable[[], Any], what: str, parameter: Optional[str] = None, missing_ok: bool = False
    ) -> Any:
        """``call()`` (which retries); its packet-python or connection error becomes a ``NixforgeError``."""
        try:
            return call()
        except NixforgeError:
            raise
        except Exception as exc:
            if not isinstance(exc, PacketError) and not _is_connection_error(exc):
                raise
            if missing_ok and metal_error_status(exc) == 404:
                return None
            raise self._masked(translate_metal_error(exc, what, parameter)) from None

    def paginate(self, path: str, key: str, what: Optional[str] = None, **query: Any) -> List[Dict[str, Any]]:
        """Every item of a paged list, following ``meta.next``."""
        items: List[Dict[str, Any]] = []
        page = 1
        while True:
            params: Dict[str, Any] = {k: quote(str(v), safe="") for k, v in query.items() if v is not None}
            params.update(page=page, per_page=PER_PAGE)
            data = self.call(path, params=params, what=what) or {}
            items.extend(data.get(key) or [])
            meta = data.get("meta") or {}
            if not meta.get("next") or page >= int(meta.get("last_page") or page):
                return items
            page += 1


def metal_client(params: Mapping[str, Any], policy: Optional[RetryPolicy] = None) -> MetalClient:
    """Build a retrying client from the ``metal_argument_spec`` options (no API call)."""
    token = require_token(params.get("auth_token"), "auth_token", TOKEN_ENV)
    end_point = normalize_api_url(params.get("api_url"))
    ca_bundle = params.get("ca_bundle")
    if ca_bundle:
        if not os.path.isfile(ca_bundle):
            raise UserInputError(
                "%r is not a file" % ca_bundle, hint="Give the path of a PEM CA bundle", parameter="ca_bundle"
            )
        # packet-python has no verify knob; requests reads this for every call of this process.
        os.environ["REQUESTS_CA_BUNDLE"] = ca_bundle
    manager = packet.Manager(auth_token=token)
    # the collection's requests say who sent them (BaseAPI's prefix; Manager does not pass it on)
    manager._user_agent_prefix = "nixforge.images "
    manager.end_point = end_point
    return MetalClient(manager, policy=policy, secrets=[token])


# -- tags --------------------------------------------------------------------------


def tag_list(tags: Mapping[str, Any]) -> List[str]:
    """Metal tags are plain strings: ``{"k": "v"}`` becomes ``["k=v"]`` (sorted)."""
    return ["%s=%s" % (k, "" if v is None else v) for k, v in sorted(tags.items())]


def tag_dict(tags: Optional[Iterable[str]]) -> Dict[str, str]:
    result: Dict[str, str] = {}
    for tag in tags or []:
        key, sep, value = str(tag).partition("=")
        result[key] = value if sep else ""
    return result
