# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only discovery of our DigitalOcean builders (droplets tagged ``nixforge-build-id:...``).

    reader = DoReader(token, api_url)                 # python-digitalocean underneath
    builders = list_builders(reader, build_ids=["b1"])

DigitalOcean tags are bare names (letters, digits, ``-``, ``_``, ``:``), so a build tag
``key=value`` is written ``key:value`` there: ``nixforge-build-id:b1``,
``nixforge-expires-at:2026-11-28T10:00:00Z`` (split at the first colon).

python-digitalocean gives the token, base URL (``DIGITALOCEAN_END_POINT``) and HTTP
session, but it neither retries nor keeps the HTTP status of an error (a 429 and a 401
both become ``DataReadError``), so the reader sends its GETs through the library's
session itself and retries 429/5xx and dropped connections.
"""

from __future__ import annotations

import datetime
import traceback
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional
from urllib.parse import urljoin

from ansible_collections.nixforge.images.plugins.module_utils._discovery import builder_record, matches
from ansible_collections.nixforge.images.plugins.module_utils.common import TAG_BUILD_ID
from ansible_collections.nixforge.images.plugins.module_utils.errors import ProviderError, UserInputError, redact
from ansible_collections.nixforge.images.plugins.module_utils.retry import (
    RetryingClient,
    RetryPolicy,
    is_retryable_http_status,
)

try:
    import digitalocean

    HAS_DIGITALOCEAN = True
    DIGITALOCEAN_IMPORT_ERROR: Optional[str] = None
except ImportError:  # pragma: no cover - exercised only without python-digitalocean
    HAS_DIGITALOCEAN = False
    DIGITALOCEAN_IMPORT_ERROR = traceback.format_exc()

try:
    import requests

    _CONNECTION_ERRORS: tuple = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
except ImportError:  # pragma: no cover - python-digitalocean depends on requests
    _CONNECTION_ERRORS = ()

__all__ = [
    "API_URL_ENV",
    "DEFAULT_API_URL",
    "HAS_DIGITALOCEAN",
    "TAG_SEPARATOR",
    "TOKEN_ENV",
    "DoHttpError",
    "DoReader",
    "do_tag_dict",
    "do_tag_list",
    "list_builders",
    "record_from_droplet",
]

DEFAULT_API_URL = "https://api.digitalocean.com/v2/"
TOKEN_ENV = ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN")
API_URL_ENV = ("DIGITALOCEAN_API_URL", "DIGITALOCEAN_END_POINT")
TAG_SEPARATOR = ":"
DEFAULT_SSH_USER = "root"
PER_PAGE = 200
DEFAULT_POLICY = RetryPolicy(max_attempts=8, base_delay=0.5, max_delay=20.0, max_total_delay=90.0)
# Droplets in these states are gone or going.
GONE_STATES = ("archive",)


def do_tag_list(tags: Mapping[str, Any]) -> List[str]:
    """``{"nixforge-build-id": "b1"}`` to ``["nixforge-build-id:b1"]`` (sorted)."""
    return ["%s%s%s" % (k, TAG_SEPARATOR, "" if v is None else v) for k, v in sorted(tags.items())]


def do_tag_dict(tags: Optional[Iterable[str]]) -> Dict[str, str]:
    result: Dict[str, str] = {}
    for tag in tags or []:
        key, sep, value = str(tag).partition(TAG_SEPARATOR)
        result.setdefault(key, value if sep else "")
    return result


class DoHttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__("HTTP %d: %s" % (status, message))
        self.status = status
        self.message = message


def _retryable(exc: BaseException) -> bool:
    if _CONNECTION_ERRORS and isinstance(exc, _CONNECTION_ERRORS):
        return True
    return isinstance(exc, DoHttpError) and is_retryable_http_status(exc.status)


class DoReader(RetryingClient):
    """GETs against the DigitalOcean API v2 with retries; errors become ``NixforgeError``."""

    def __init__(
        self,
        token: Optional[str],
        api_url: Optional[str] = None,
        policy: Optional[RetryPolicy] = None,
        sleep: Optional[Callable[[float], None]] = None,
        manager: Any = None,
    ) -> None:
        if not token:
            raise UserInputError(
                "no DigitalOcean API token given",
                hint="Set 'do_api_token' or one of the environment variables %s" % ", ".join(TOKEN_ENV),
                parameter="do_api_token",
            )
        url = (api_url or DEFAULT_API_URL).strip()
        if not url.startswith(("http://", "https://")):
            raise UserInputError(
                "%r is not an http(s) URL" % url,
                hint="Give the API base URL, for example 'https://api.digitalocean.com/v2/'",
                parameter="do_api_url",
            )
        if not url.endswith("/"):
            url += "/"  # urljoin would drop the last path segment (v2) otherwise
        if manager is None:
            if not HAS_DIGITALOCEAN:
                raise UserInputError(
                    "the python-digitalocean library is missing",
                    hint="Install python-digitalocean on the controller (requirements.txt of the collection)",
                )
            manager = digitalocean.Manager(token=token, end_point=url)
        self.manager = manager
        self.api_url = url
        self.token = token
        super().__init__(policy or DEFAULT_POLICY, [token], sleep)

    def _get_once(self, path: str, params: Mapping[str, Any]) -> Dict[str, Any]:
        response = self.manager._session.get(
            urljoin(self.api_url, path),
            params=dict(params),
            headers={"Authorization": "Bearer " + self.token, "Content-Type": "application/json"},
            timeout=60,
        )
        if response.status_code >= 400:
            try:
                body = response.json()
                message = str(body.get("message") or body.get("id") or response.text)
            except Exception:  # noqa: BLE001 - an HTML error page has no JSON
                message = (response.text or "").strip()[:200] or response.reason
            raise DoHttpError(response.status_code, message)
        data = response.json()
        return data if isinstance(data, dict) else {}

    def get(self, path: str, what: str, **params: Any) -> Dict[str, Any]:
        try:
            return self._with_retry(self._get_once, _retryable, path, params)
        except DoHttpError as exc:
            raise self._translate(exc, what) from None
        except Exception as exc:
            if _CONNECTION_ERRORS and isinstance(exc, _CONNECTION_ERRORS):
                raise ProviderError(
                    redact("the DigitalOcean API did not answer (%s)" % exc, self.secrets),
                    hint="Check 'do_api_url' and the network",
                    what=what,
                    retryable=True,
                ) from None
            raise

    def _translate(self, exc: DoHttpError, what: str) -> Exception:
        message = redact(exc.message, self.secrets)
        if exc.status == 401:
            return UserInputError(
                "DigitalOcean refused the token (HTTP 401: %s)" % message,
                hint="Check 'do_api_token' (or %s)" % " / ".join(TOKEN_ENV),
                parameter="do_api_token",
                what=what,
            )
        if is_retryable_http_status(exc.status):
            return ProviderError(
                "HTTP %d: %s" % (exc.status, message),
                hint="DigitalOcean kept throttling or failing after retries; try again later",
                what=what,
                status=exc.status,
                retryable=True,
            )
        return ProviderError("HTTP %d: %s" % (exc.status, message), what=what, status=exc.status)

    def paginate(self, path: str, key: str, what: str, **params: Any) -> List[Dict[str, Any]]:
        items: List[Dict[str, Any]] = []
        page = 1
        while True:
            data = self.get(path, what, page=page, per_page=PER_PAGE, **params)
            items.extend(data.get(key) or [])
            if not ((data.get("links") or {}).get("pages") or {}).get("next"):
                return items
            page += 1

    def droplets(self, tag_name: Optional[str] = None) -> List[Dict[str, Any]]:
        params = {"tag_name": tag_name} if tag_name else {}
        return self.paginate("droplets", "droplets", "Listing the DigitalOcean droplets", **params)


def _networks(droplet: Mapping[str, Any]) -> Dict[str, Optional[str]]:
    found: Dict[str, Optional[str]] = {"public_ipv4": None, "private_ipv4": None, "public_ipv6": None}
    networks = droplet.get("networks") or {}
    for entry in networks.get("v4") or []:
        key = "public_ipv4" if entry.get("type") == "public" else "private_ipv4"
        found[key] = found[key] or entry.get("ip_address")
    for entry in networks.get("v6") or []:
        if entry.get("type") == "public":
            found["public_ipv6"] = found["public_ipv6"] or entry.get("ip_address")
    return found


def _architecture(droplet: Mapping[str, Any]) -> str:
    # Every droplet size is x86_64 today; an image may say otherwise.
    image = droplet.get("image") or {}
    return str(image.get("architecture") or "x86_64")


def record_from_droplet(droplet: Mapping[str, Any], now: Optional[datetime.datetime] = None) -> Dict[str, Any]:
    tags = do_tag_dict(droplet.get("tags"))
    size = droplet.get("size") or {}
    price = size.get("price_hourly")
    return builder_record(
        "digitalocean",
        str(droplet.get("id", "")),
        droplet.get("name") or str(droplet.get("id", "")),
        tags,
        now=now,
        state=droplet.get("status"),
        location=(droplet.get("region") or {}).get("slug"),
        instance_type=droplet.get("size_slug") or size.get("slug"),
        architecture=_architecture(droplet),
        price_per_hour=float(price) if price is not None else None,
        lifecycle="on-demand",
        launched_at=droplet.get("created_at"),
        ssh_user=DEFAULT_SSH_USER,
        **_networks(droplet),
    )


def list_builders(
    reader: DoReader,
    build_ids: Iterable[str] = (),
    pipelines: Iterable[str] = (),
    expired: Optional[bool] = None,
    now: Optional[datetime.datetime] = None,
) -> List[Dict[str, Any]]:
    """Builder records of the account's droplets that carry our tags."""
    build_ids = list(build_ids or [])
    pipelines = list(pipelines or [])
    if build_ids:
        droplets: List[Dict[str, Any]] = []
        for build_id in build_ids:
            droplets.extend(reader.droplets(tag_name="%s%s%s" % (TAG_BUILD_ID, TAG_SEPARATOR, build_id)))
    else:
        droplets = reader.droplets()
    seen = set()
    records = []
    for droplet in droplets:
        if droplet.get("id") in seen or droplet.get("status") in GONE_STATES:
            continue
        seen.add(droplet.get("id"))
        records.append(record_from_droplet(droplet, now))
    return [r for r in records if matches(r, build_ids, pipelines, expired)]
