#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: b2_build_info
short_description: List the B2 files of builds in buckets
version_added: 0.2.0
description:
  - Lists everything of ours in one or more B2 buckets, grouped by build; every file version and hide marker
    and every unfinished large file under C(nixforge/), attributed by their file info C(nixforge-build-id)
    (else by the build id in their name C(nixforge/<id>/...)) and dated by C(nixforge-expires-at).
  - A build whose resources carry no readable C(nixforge-expires-at) counts as expired (a leak); a build
    found in several buckets expires at the latest expiry any of its resources carries.
  - Reads only. Pair it with M(nixforge.images.b2_object) in C(state=absent), as C(playbooks/reap.yml) does.
author:
  - nixforge.images contributors (@nixforge)
extends_documentation_fragment:
  - nixforge.images.b2
  - nixforge.images.attributes
  - nixforge.images.attributes.diff_none
  - nixforge.images.attributes.actiongroup_b2
  - nixforge.images.build_info
options:
  buckets:
    description:
      - The buckets to look in.
    type: list
    elements: str
    required: true
seealso:
  - module: nixforge.images.b2_object
notes:
  - Use C(playbooks/reap.yml) to remove what this module finds in every provider.
"""

EXAMPLES = r"""
- name: Expired builds' files in the image bucket
  nixforge.images.b2_build_info:
    buckets: [my-images]
    expired: true
  register: expired_files
"""

RETURN = r"""
builds:
  description: One entry per build that has resources in the buckets, sorted by build id.
  returned: always
  type: list
  elements: dict
  contains:
    build_id:
      description: The build's C(nixforge-build-id).
      type: str
      sample: do-image-42
    pipeline:
      description: The build's C(nixforge-pipeline), if any resource carries it.
      type: str
      sample: do-image
    expires_at:
      description: The latest readable C(nixforge-expires-at) of the build's resources (UTC); null if none.
      type: str
      sample: "2026-11-22T18:00:00Z"
    expired:
      description: Whether RV(builds[].expires_at) has passed (or is missing).
      type: bool
      sample: true
    resources:
      description: The build's resources, in the order they are removed.
      type: list
      elements: dict
      contains:
        type:
          description: The kind of resource, one of V(file_version), V(hide_marker), V(unfinished_large_file).
          type: str
          sample: unfinished_large_file
        id:
          description: The provider's id of the resource.
          type: str
        name:
          description: Its name (or the id when it has none).
          type: str
        location:
          description: The bucket.
          type: str
        state:
          description: Its state as the provider reports it, if it has one.
          type: str
        product:
          description: Always false (B2 objects are a build's intermediate files).
          type: bool
"""

from typing import Any, Dict, List, Optional

from ansible_collections.nixforge.images.plugins.module_utils._b2._client import (
    REQUIRED_LIBRARIES,
    B2Client,
    b2_argument_spec,
    b2_client,
)
from ansible_collections.nixforge.images.plugins.module_utils._b2._discovery import list_builds
from ansible_collections.nixforge.images.plugins.module_utils._base._build_info import (
    BuildInfoModule,
    build_info_argument_spec,
)


class B2BuildInfo(BuildInfoModule):
    argument_spec = dict(build_info_argument_spec(), buckets=dict(type="list", elements="str", required=True))
    provider_argument_spec = b2_argument_spec()
    required_libraries = REQUIRED_LIBRARIES
    location_option = "buckets"
    client: Optional[B2Client] = None

    def list_location(self, location: Optional[str], build_ids: List[str]) -> List[Dict[str, Any]]:
        if self.client is None:
            self.client = b2_client(self.params)
            self.client.authorize()
        return list_builds(self.client, str(location), build_ids)


def main() -> None:
    B2BuildInfo().execute()


if __name__ == "__main__":
    main()
