# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: the DigitalOcean client (python-digitalocean behind one door); no stable interface.
"""python-digitalocean behind one door: client, retries, errors, tags, catalogue checks.

    client = digitalocean_client(module.params)        # UserInputError on bad input
    regions = client.regions()
    images = client.list_images(tag="nixforge-build-id:do-42")
    image = client.create_image(body, find=lambda: ...)

python-digitalocean (``BaseAPI.get_data``) does the transport: the end point, the bearer
token, JSON. Its object layer is not used, because it hides what retries need:
``get_data`` raises ``DataReadError`` with DO's message but without the HTTP status, at
once on 429 and 5xx; a 404 raises ``NotFoundError`` without a body; an error body
without ``id``/``message`` raises ``IndexError``; a failed page of a paged list is merged
silently; requests have no timeout. So the transport here records the last response,
pages explicitly, sets a timeout, and every call is retried with the project's
:class:`RetryPolicy`, honouring ``retry-after`` and (when the budget is used up)
``ratelimit-reset``.

HTTPS is verified against ``ca_bundle`` (or DIGITALOCEAN_CA_BUNDLE) when given, else the
system's store / REQUESTS_CA_BUNDLE; a certificate that does not verify fails at once
(never retried), naming ``ca_bundle``.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import time
import traceback
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional
from urllib.parse import urljoin, urlsplit

from ansible.module_utils.basic import env_fallback
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import (
    NixforgeError,
    ProviderError,
    UserInputError,
    redact,
    require_token,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._requests import CONNECTION_ERRORS, TLS_ERRORS
from ansible_collections.nixforge.images.plugins.module_utils._base._retry import (
    RetryingClient,
    RetryPolicy,
    backoff_delays,
    find_before_retry,
    is_retryable_http_status,
)
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._tls import (
    CA_BUNDLE_ENV,
    VerifyingSession,
    check_ca_bundle,
    tls_reason,
)

try:
    from digitalocean import __version__ as DIGITALOCEAN_VERSION
    from digitalocean.baseapi import BaseAPI, NotFoundError
    from digitalocean.baseapi import Error as DigitalOceanLibraryError

    HAS_DIGITALOCEAN = True
    DIGITALOCEAN_IMPORT_ERROR: Optional[str] = None
except ImportError:  # pragma: no cover - exercised only without python-digitalocean
    HAS_DIGITALOCEAN = False
    DIGITALOCEAN_IMPORT_ERROR = traceback.format_exc()
    BaseAPI = object  # type: ignore[misc,assignment]
    DIGITALOCEAN_VERSION = "none"
    NotFoundError = DigitalOceanLibraryError = Exception  # type: ignore[misc,assignment]

__all__ = [
    "API_URL_ENV",
    "DEFAULT_API_URL",
    "DISTRIBUTIONS",
    "HAS_DIGITALOCEAN",
    "REQUIRED_LIBRARIES",
    "TOKEN_ENV",
    "DigitalOceanClient",
    "DigitalOceanError",
    "check_ca_bundle",
    "check_distribution",
    "check_regions",
    "digitalocean_argument_spec",
    "digitalocean_client",
    "do_tags",
    "normalize_api_url",
    "tag_dict",
]

REQUIRED_LIBRARIES = [("python-digitalocean", HAS_DIGITALOCEAN, DIGITALOCEAN_IMPORT_ERROR)]
DEFAULT_API_URL = "https://api.digitalocean.com/v2/"
TOKEN_ENV = ("DIGITALOCEAN_TOKEN", "DO_API_TOKEN")
API_URL_ENV = ("DIGITALOCEAN_API_URL",)
USER_AGENT = "python-digitalocean/%s (nixforge.images)" % DIGITALOCEAN_VERSION
DEFAULT_POLICY = RetryPolicy(max_attempts=8, base_delay=0.5, max_delay=20.0, max_total_delay=120.0)
REQUEST_TIMEOUT = 60.0
PER_PAGE = 200
# The values DigitalOcean documents for a custom image's distribution (API v2, `distribution`).
DISTRIBUTIONS = (
    "Arch Linux",
    "CentOS",
    "CoreOS",
    "Debian",
    "Fedora",
    "Fedora Atomic",
    "FreeBSD",
    "Gentoo",
    "openSUSE",
    "RancherOS",
    "Rocky Linux",
    "Ubuntu",
    "Unknown",
)
TAG_RE = re.compile(r"^[A-Za-z0-9_:\-]{1,255}$")
TAG_PART_RE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_:\-]*$|^$")


def digitalocean_argument_spec() -> Dict[str, Any]:
    """Options of ``doc_fragments/digitalocean.py`` (keep both in step)."""
    return dict(
        oauth_token=dict(type="str", no_log=True, aliases=["api_token"], fallback=(env_fallback, list(TOKEN_ENV))),
        api_url=dict(type="str", default=DEFAULT_API_URL, fallback=(env_fallback, list(API_URL_ENV))),
        ca_bundle=dict(type="path", fallback=(env_fallback, list(CA_BUNDLE_ENV))),
    )


def normalize_api_url(value: Optional[str]) -> str:
    """An absolute http(s) URL ending in ``/`` (python-digitalocean joins paths onto it)."""
    text = (value or DEFAULT_API_URL).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise UserInputError(
            "%r is not an http(s) URL of the API" % (value,),
            hint="Write it like 'https://api.digitalocean.com/v2/'",
            parameter="api_url",
        )
    return text if text.endswith("/") else text + "/"


# -- errors ------------------------------------------------------------------------


class DigitalOceanError(Exception):
    """One failed call, with what the library's exceptions lose: status, DO's error id,
    the request id and how long DigitalOcean asked us to wait."""

    def __init__(
        self,
        message: str,
        status: Optional[int] = None,
        error_id: Optional[str] = None,
        request_id: Optional[str] = None,
        retry_after: Optional[float] = None,
        connection: bool = False,
        tls: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_id = error_id
        self.request_id = request_id
        self.retry_after = retry_after
        self.connection = connection
        self.tls = tls  # the server's certificate did not verify: waiting cannot heal that

    @property
    def retryable(self) -> bool:
        return not self.tls and (self.connection or is_retryable_http_status(self.status))


def _retry_after(headers: Mapping[str, str], now: Optional[float] = None) -> Optional[float]:
    """Seconds DigitalOcean asks us to wait: ``retry-after`` (seconds or HTTP date), else the
    ``ratelimit-reset`` epoch when ``ratelimit-remaining`` is 0 (the budget is used up)."""
    now = time.time() if now is None else now
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value:
        value = value.strip()
        if re.match(r"^\d+(\.\d+)?$", value):
            return float(value)
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError):
            return None
    remaining = headers.get("ratelimit-remaining")
    reset = headers.get("ratelimit-reset")
    if remaining is not None and remaining.strip() == "0" and reset and reset.strip().isdigit():
        return max(0.0, float(reset) - now)
    return None


def error_from_response(response: Any, exc: Optional[BaseException] = None) -> DigitalOceanError:
    """DO's ``{"id", "message", "request_id"}`` body (or whatever came) as an error."""
    status = getattr(response, "status_code", None)
    body: Any = None
    try:
        body = response.json()
    except Exception:  # noqa: BLE001 - an HTML error page from a proxy is not JSON
        body = None
    headers = {str(k).lower(): str(v) for k, v in dict(getattr(response, "headers", None) or {}).items()}
    error_id = message = request_id = None
    if isinstance(body, Mapping):
        error_id = body.get("id")
        message = body.get("message")
        request_id = body.get("request_id")
    if not message:
        text = str(getattr(response, "text", "") or "").strip()
        message = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()[:200] if text else ""
    if not message:
        message = str(exc) if exc is not None and str(exc) else "HTTP %s" % status
    return DigitalOceanError(
        str(message),
        status=int(status) if status is not None else None,
        error_id=str(error_id) if error_id else None,
        request_id=str(request_id or headers.get("x-request-id") or "") or None,
        retry_after=_retry_after(headers),
    )


def _guess_parameter(message: str, candidates: Iterable[str]) -> Optional[str]:
    lowered = message.lower()
    for name in candidates:
        if re.search(r"\b%s" % re.escape(name.rstrip("s")), lowered):
            return name
    return None


def _unreachable(error: DigitalOceanError, what: str, retries_note: str) -> NixforgeError:
    """The API never answered: its TLS certificate was not trusted, or the connection failed."""
    if error.tls:
        return UserInputError(
            "the TLS certificate of the DigitalOcean API was not trusted (%s)" % error.message,
            hint="Check 'api_url'; for an endpoint with its own CA give that CA's PEM file in 'ca_bundle' "
            "(or %s)" % " / ".join(CA_BUNDLE_ENV),
            parameter="ca_bundle",
            what=what,
        )
    return ProviderError(
        "the DigitalOcean API did not answer (%s)%s" % (error.message, retries_note),
        hint="Check 'api_url' (or DIGITALOCEAN_API_URL) and the network",
        what=what,
        retryable=True,
    )


def _refused_token(status: int, reason: str, what: str) -> NixforgeError:
    """401 (the token is not accepted) or 403 (the token lacks a scope): both name ``oauth_token``."""
    if status == 401:
        return UserInputError(
            "DigitalOcean refused the token (HTTP 401: %s)" % reason,
            hint="Check 'oauth_token' (or the environment variables %s) and 'api_url'" % " / ".join(TOKEN_ENV),
            parameter="oauth_token",
            what=what,
            status=status,
        )
    return UserInputError(
        "the token may not do this (HTTP 403: %s)" % reason,
        hint="Use a token with read and write scope for images, actions, regions and tags in 'oauth_token'",
        parameter="oauth_token",
        what=what,
        status=status,
    )


def translate(
    error: DigitalOceanError,
    what: str,
    parameters: Iterable[str] = (),
    retries_note: str = "",
) -> NixforgeError:
    """Our error for a failed call: 401/403 name ``oauth_token``; other 4xx the parameter
    DO's message points at; 429/5xx say DigitalOcean kept failing after retries."""
    status = error.status
    reason = error.message.rstrip(".")
    if error.request_id:
        reason += " (request id %s)" % error.request_id
    if error.tls or error.connection:
        return _unreachable(error, what, retries_note)
    if status is not None and status in (401, 403):
        return _refused_token(status, reason, what)
    if status is not None and is_retryable_http_status(status):
        return ProviderError(
            "HTTP %d %s: %s%s" % (status, error.error_id or "", reason, retries_note),
            hint="DigitalOcean kept throttling or failing; try again later",
            what=what,
            code=error.error_id,
            status=status,
            retryable=True,
        )
    if status is not None and 400 <= status < 500:
        parameter = _guess_parameter(error.message, parameters)
        return UserInputError(
            "HTTP %d %s: %s" % (status, error.error_id or "", reason),
            hint=("Check the parameter '%s'" % parameter) if parameter else "Check the parameters named in the message",
            parameter=parameter,
            what=what,
            code=error.error_id,
            status=status,
        )
    return ProviderError(
        "%s%s" % ("HTTP %d: " % status if status else "", reason), what=what, code=error.error_id, status=status
    )


# -- transport ---------------------------------------------------------------------


class Transport(BaseAPI):  # type: ignore[misc,valid-type]
    """python-digitalocean's BaseAPI, keeping the last response, with a request timeout and
    (optionally) its own CA bundle."""

    last_response: Any = None

    def __init__(self, *args: Any, ca_bundle: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if ca_bundle:
            self._session = VerifyingSession(ca_bundle)

    # BaseAPI.__perform_request (name-mangled) sends every request; replacing it keeps the
    # response that get_data's exceptions do not carry, and sends every method through the
    # session (the library posts with module-level requests.post, which would skip the CA).
    def _BaseAPI__perform_request(self, url: str, type: str = "GET", params: Any = None) -> Any:
        self.last_response = None
        headers = {"Content-Type": "application/json", "Authorization": "Bearer " + self.token}
        headers["User-Agent"] = USER_AGENT
        body: Dict[str, Any] = {"params": dict(params or {})} if type == "GET" else {"data": json.dumps(params or {})}
        response = self._session.request(
            type, urljoin(self.end_point, url), headers=headers, timeout=self.get_timeout(), **body
        )
        self.last_response = response
        return response

    def get_timeout(self) -> Optional[float]:
        # the library waits forever without PYTHON_DIGITALOCEAN_REQUEST_TIMEOUT_SEC
        return BaseAPI.get_timeout(self) or REQUEST_TIMEOUT  # type: ignore[attr-defined]


class DigitalOceanClient(RetryingClient):
    """The API calls do_custom_image makes, each retried with our policy."""

    def __init__(
        self,
        transport: Any,
        policy: Optional[RetryPolicy] = None,
        secrets: Iterable[Optional[str]] = (),
        sleep: Optional[Callable[[float], None]] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.transport = transport
        self.rng = rng
        self.slept = 0.0
        super().__init__(policy or DEFAULT_POLICY, secrets, sleep)

    # -- one call ------------------------------------------------------------------

    def _once(self, method: str, path: str, params: Optional[Mapping[str, Any]]) -> Any:
        try:
            return self.transport.get_data(path, type=method, params=dict(params or {}))
        except TLS_ERRORS as exc:  # type: ignore[misc] - before CONNECTION_ERRORS, its parent
            raise DigitalOceanError(redact(tls_reason(exc), self.secrets), connection=True, tls=True) from None
        except CONNECTION_ERRORS as exc:  # type: ignore[misc]
            raise DigitalOceanError(redact(str(exc), self.secrets), connection=True) from None
        except (DigitalOceanLibraryError, IndexError) as exc:  # IndexError: an error body without id/message
            response = self.transport.last_response
            if response is None:
                raise DigitalOceanError(redact(str(exc) or type(exc).__name__, self.secrets)) from None
            if isinstance(exc, NotFoundError) or response.status_code == 404:
                raise DigitalOceanError("not found", status=404, error_id="not_found") from None
            raise error_from_response(response, exc) from None

    def _retrying(self, attempt: Callable[[], Any]) -> Any:
        """Call ``attempt`` until it succeeds, a non-retryable error comes, or the policy
        gives up; the pause is the jittered backoff or what DigitalOcean asked for, if longer."""
        delays = backoff_delays(self.policy, self.rng)
        slept = 0.0
        number = 1
        while True:
            try:
                return attempt()
            except DigitalOceanError as exc:
                if not exc.retryable:
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                if exc.retry_after is not None and exc.retry_after > delay:
                    delay = exc.retry_after
                if slept + delay > self.policy.max_total_delay:
                    if exc.retry_after is not None and exc.retry_after == delay:
                        exc.message += "; DigitalOcean asked to wait %d s more, past the retry budget" % delay
                    raise
                self._on_retry(number, exc, delay)
                (self._sleep or time.sleep)(delay)
                slept += delay
                self.slept += delay
                number += 1

    def call(
        self,
        path: str,
        method: str = "GET",
        params: Optional[Mapping[str, Any]] = None,
        what: Optional[str] = None,
        parameters: Iterable[str] = (),
        missing_ok: bool = False,
    ) -> Any:
        """One API call with retries; with ``missing_ok`` a 404 returns ``None``."""
        return self.guarded(
            lambda: self._once(method, path, params), what or "%s %s" % (method, path), parameters, missing_ok
        )

    def guarded(
        self, attempt: Callable[[], Any], what: str, parameters: Iterable[str] = (), missing_ok: bool = False
    ) -> Any:
        retries_before = self.retries
        try:
            return self._retrying(attempt)
        except DigitalOceanError as exc:
            if missing_ok and exc.status == 404:
                return None
            done = self.retries - retries_before
            note = " (after %d retries)" % done if done else ""
            raise self._masked(translate(exc, what, parameters, note)) from None

    def create(
        self,
        path: str,
        body: Mapping[str, Any],
        find: Callable[[], Optional[Dict[str, Any]]],
        what: str,
        parameters: Iterable[str] = (),
    ) -> Dict[str, Any]:
        """POST with retries; before each retry ``find()`` what an earlier attempt may have
        made (a 5xx or a dropped connection can hide a create that succeeded)."""
        return self.guarded(find_before_retry(lambda: self._once("POST", path, body), find), what, parameters)

    def paginate(self, path: str, key: str, what: str, **query: Any) -> List[Dict[str, Any]]:
        """Every item of a paged list; each page is its own retried call."""
        items: List[Dict[str, Any]] = []
        page = 1
        while True:
            params = {k: v for k, v in query.items() if v is not None}
            params.update(page=page, per_page=PER_PAGE)
            data = self.call(path, params=params, what=what) or {}
            chunk = data.get(key) or []
            items.extend(chunk)
            if not ((data.get("links") or {}).get("pages") or {}).get("next") or not chunk:
                return items
            page += 1

    # -- the calls ------------------------------------------------------------------

    def regions(self) -> List[Dict[str, Any]]:
        return self.paginate("regions", "regions", "Listing DigitalOcean's regions")

    def list_images(self, tag: Optional[str] = None) -> List[Dict[str, Any]]:
        """The account's own (private) images, optionally those carrying ``tag``."""
        images = self.paginate("images", "images", "Listing the custom images", private="true", tag_name=tag)
        return [i for i in images if tag is None or tag in (i.get("tags") or [])]

    def get_image(self, image_id: Any) -> Optional[Dict[str, Any]]:
        data = self.call("images/%s" % image_id, what="Reading image %s" % image_id, missing_ok=True)
        return None if data is None else data.get("image")

    def delete_image(self, image_id: Any) -> bool:
        """Whether an image was deleted (False: it was already gone)."""
        return (
            self.call("images/%s" % image_id, "DELETE", what="Deleting image %s" % image_id, missing_ok=True)
            is not None
        )

    def update_image(self, image_id: Any, fields: Mapping[str, Any]) -> Dict[str, Any]:
        data = self.call(
            "images/%s" % image_id,
            "PUT",
            fields,
            what="Updating image %s" % image_id,
            parameters=list(fields),
        )
        return data["image"]

    def image_actions(self, image_id: Any) -> List[Dict[str, Any]]:
        return self.paginate("images/%s/actions" % image_id, "actions", "Listing the actions of image %s" % image_id)

    def get_action(self, action_id: Any) -> Optional[Dict[str, Any]]:
        data = self.call("actions/%s" % action_id, what="Reading action %s" % action_id, missing_ok=True)
        return None if data is None else data.get("action")


def digitalocean_client(params: Mapping[str, Any], policy: Optional[RetryPolicy] = None) -> DigitalOceanClient:
    """A retrying client from the ``digitalocean_argument_spec`` options (no API call)."""
    token = require_token((params.get("oauth_token") or "").strip(), "oauth_token", TOKEN_ENV)
    end_point = normalize_api_url(params.get("api_url"))
    # The library falls back to DIGITALOCEAN_ACCESS_TOKEN / DIGITALOCEAN_END_POINT for
    # anything not passed; both are passed, so the environment cannot override them.
    transport = Transport(token=token, end_point=end_point, ca_bundle=check_ca_bundle(params.get("ca_bundle")))
    return DigitalOceanClient(transport, policy=policy, secrets=[token])


# -- input checks ----------------------------------------------------------------------


def check_distribution(value: Optional[str]) -> str:
    """DigitalOcean's spelling of ``value`` (case-insensitive match), else a UserInputError."""
    text = (value or "Unknown").strip()
    for known in DISTRIBUTIONS:
        if known.lower() == text.lower():
            return known
    raise UserInputError(
        "%r is not a distribution DigitalOcean knows" % text,
        hint="Use one of: %s (DigitalOcean would silently store anything else as 'Unknown')" % ", ".join(DISTRIBUTIONS),
        parameter="distribution",
    )


def check_regions(regions: List[Dict[str, Any]], wanted: Iterable[str], parameter: str) -> None:
    """Every slug in ``wanted`` is a region that takes new resources."""
    known = {str(r.get("slug")): r for r in regions if r.get("slug")}
    available = sorted(s for s, r in known.items() if r.get("available", True))
    for slug in wanted:
        region = known.get(slug)
        if region is None:
            raise UserInputError(
                "unknown region %r" % slug, hint="Valid regions: %s" % ", ".join(available), parameter=parameter
            )
        if not region.get("available", True):
            raise UserInputError(
                "region %r takes no new resources" % slug,
                hint="Valid regions: %s" % ", ".join(available),
                parameter=parameter,
            )


# -- tags --------------------------------------------------------------------------


def do_tags(tags: Mapping[str, Any]) -> List[str]:
    """DigitalOcean tags are plain names: ``{"k": "v"}`` becomes ``["k:v"]`` (sorted); a tag
    without value is just ``k``. DO allows letters, digits, ``-``, ``_`` and ``:``."""
    out: List[str] = []
    for key, value in sorted(tags.items()):
        key, value = str(key), "" if value is None else str(value)
        if ":" in key or not key or not TAG_PART_RE.match(key) or not TAG_PART_RE.match(value):
            raise UserInputError(
                "tag %r: %r cannot be a DigitalOcean tag" % (key, value),
                hint="Tag keys and values may contain only letters, digits, '-' and '_' (values also ':'); "
                "DigitalOcean stores each tag as 'key:value'",
                parameter="tags",
            )
        tag = "%s:%s" % (key, value) if value else key
        if not TAG_RE.match(tag):
            raise UserInputError(
                "tag %r is longer than DigitalOcean's 255 characters" % tag, hint="Shorten it", parameter="tags"
            )
        out.append(tag)
    return out


def tag_dict(tags: Optional[Iterable[str]]) -> Dict[str, str]:
    result: Dict[str, str] = {}
    for tag in tags or []:
        key, _sep, value = str(tag).partition(":")
        result[key] = value
    return result
