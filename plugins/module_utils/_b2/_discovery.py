# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: read-only discovery of a build's B2 objects; no stable interface.
"""Read-only discovery of our B2 objects (file versions and unfinished large files).

    client = b2_client(params); client.authorize()   # module_utils/_b2/_client.py
    builds = list_builds(client, "my-images")

Everything b2_object uploads lives under ``nixforge/<build id>/`` and carries the
build identity as file info (``nixforge-build-id``, ``nixforge-expires-at``...). A file
whose info lost the build id is still attributed to the build its name says.
"""

from __future__ import annotations

import datetime
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from ansible_collections.nixforge.images.plugins.module_utils._b2._client import NAME_ROOT
from ansible_collections.nixforge.images.plugins.module_utils._base._discovery import (
    filter_builds,
    group_builds,
    resource_record,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import TAG_BUILD_ID

__all__ = ["file_tags", "list_builds"]


def file_tags(entry: Mapping[str, Any]) -> Dict[str, str]:
    """The build tags of one file version (its file info, else the build id of its name)."""
    info = entry.get("file_info") or {}
    tags = {str(k): str(v) for k, v in info.items() if str(k).startswith("nixforge-")}
    parts = str(entry.get("name") or "").split("/")
    if not tags.get(TAG_BUILD_ID) and len(parts) > 2 and parts[0] == NAME_ROOT and parts[1]:
        tags[TAG_BUILD_ID] = parts[1]
    return tags


def list_builds(
    client: Any,
    bucket_name: str,
    build_ids: Iterable[str] = (),
    expired: Optional[bool] = None,
    now: Optional[datetime.datetime] = None,
) -> List[Dict[str, Any]]:
    """Build records (see ``_discovery.group_builds``) of one bucket's ``nixforge/`` files."""
    build_ids = list(build_ids or [])
    bucket = client.bucket(bucket_name)
    prefixes = ["%s/%s/" % (NAME_ROOT, b) for b in build_ids] or ["%s/" % NAME_ROOT]
    found: List[Tuple[Dict[str, str], Dict[str, Any]]] = []
    for prefix in prefixes:
        for version in client.versions(bucket, prefix):
            kind = "file_version" if version.get("action") == "upload" else "hide_marker"
            found.append(
                (file_tags(version), resource_record(kind, version.get("file_id"), version.get("name"), bucket_name))
            )
        for unfinished in client.unfinished(bucket, prefix):
            found.append(
                (
                    file_tags(unfinished),
                    resource_record(
                        "unfinished_large_file", unfinished.get("file_id"), unfinished.get("name"), bucket_name
                    ),
                )
            )
    return filter_builds(group_builds(found, now), build_ids, expired)
