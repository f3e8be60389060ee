# -*- coding: utf-8 -*-
# Private to this collection: DigitalOcean account SSH keys of a build; no stable interface.
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Account SSH keys (``/v2/account/keys``) that belong to a build.

DigitalOcean keys carry no tags, so the build id and the expiry live in the key's name:
``nixforge-<build id>-<expiry as YYYYMMDDTHHMMSSZ>``. The expiry has a fixed shape, so a
build id with hyphens still reads back unambiguously, and the reaper can date a key it
finds without any other record.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.nixforge.images.plugins.module_utils._base._identity import (
    TAG_BUILD_ID,
    TAG_EXPIRES_AT,
    UTC,
    format_timestamp,
)

KEY_NAME_RE = re.compile(r"^nixforge-(?P<build_id>[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)-(?P<expires>\d{8}T\d{6}Z)$")
_COMPACT = "%Y%m%dT%H%M%SZ"


def key_name(build_id: str, expires_at: datetime.datetime) -> str:
    """The name that makes a key findable (by build id) and datable (by expiry)."""
    return "nixforge-%s-%s" % (build_id, expires_at.astimezone(UTC).strftime(_COMPACT))


def parse_key_name(name: Any) -> Optional[Tuple[str, str]]:
    """``(build id, ISO-8601 expiry)`` of one of our key names, else None."""
    match = KEY_NAME_RE.match(str(name or ""))
    if not match:
        return None
    moment = datetime.datetime.strptime(match.group("expires"), _COMPACT).replace(tzinfo=UTC)
    return match.group("build_id"), format_timestamp(moment)


def key_tags(key: Dict[str, Any]) -> Dict[str, str]:
    """The tags a key would carry if DigitalOcean had tags for keys (for the reaper)."""
    parsed = parse_key_name(key.get("name"))
    if parsed is None:
        return {}
    return {TAG_BUILD_ID: parsed[0], TAG_EXPIRES_AT: parsed[1]}


def list_keys(client: Any) -> List[Dict[str, Any]]:
    return client.paginate("account/keys", "ssh_keys", "Listing the account's SSH keys")


def build_keys(client: Any, build_id: str) -> List[Dict[str, Any]]:
    """The account keys named for ``build_id`` (whatever their expiry)."""
    return [k for k in list_keys(client) if (parse_key_name(k.get("name")) or ("",))[0] == build_id]


def same_public_key(one: Any, other: Any) -> bool:
    """Type and key data equal (DigitalOcean keeps the comment, but it does not matter)."""
    return bool(one) and bool(other) and str(one).split()[:2] == str(other).split()[:2]


def create_key(client: Any, name: str, public_key: str) -> Dict[str, Any]:
    """Register ``public_key`` as ``name``; a retried POST first looks for an earlier success."""

    def find() -> Optional[Dict[str, Any]]:
        for key in list_keys(client):
            if key.get("name") == name and same_public_key(key.get("public_key"), public_key):
                return {"ssh_key": key}
        return None

    answer = client.create(
        "account/keys",
        {"name": name, "public_key": public_key},
        find,
        "Registering SSH key %s" % name,
        parameters=("public_key", "name"),
    )
    return answer["ssh_key"]


def delete_key(client: Any, key_id: Any) -> bool:
    """Delete one key; False when it was gone already."""
    answer = client.call("account/keys/%s" % key_id, "DELETE", what="Deleting SSH key %s" % key_id, missing_ok=True)
    return answer is not None


def key_view(key: Dict[str, Any]) -> Dict[str, Any]:
    """What the modules return about a key (never more than DigitalOcean shows)."""
    parsed = parse_key_name(key.get("name")) or (None, None)
    return {
        "id": str(key.get("id")),
        "name": key.get("name"),
        "fingerprint": key.get("fingerprint"),
        "public_key": key.get("public_key"),
        "build_id": parsed[0],
        "expires_at": parsed[1],
    }
