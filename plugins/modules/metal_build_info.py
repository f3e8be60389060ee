#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: metal_build_info
short_description: List the devices and project SSH keys of builds in Equinix Metal projects
version_added: 0.2.0
description:
  - Lists everything of ours in one or more Equinix Metal projects, grouped by build; devices tagged
    C(nixforge-build-id=<id>) (not yet deleted) and project SSH keys tagged so or labelled
    C(nixforge-<id>-ssh) as M(nixforge.images.metal_device) names them.
  - A build whose resources carry no readable C(nixforge-expires-at) counts as expired (a leak); a build
    found in several projects expires at the latest expiry any of its resources carries.
  - Reads only. Pair it with M(nixforge.images.metal_device) in C(state=absent), as C(playbooks/reap.yml) does.
author:
  - nixforge.images contributors (@nixforge)
extends_documentation_fragment:
  - nixforge.images.metal
  - nixforge.images.attributes
  - nixforge.images.attributes.diff_none
  - nixforge.images.attributes.actiongroup_metal
  - nixforge.images.build_info
options:
  project_ids:
    description:
      - The projects to look in. Default, the one project of O(project_id) (or E(METAL_PROJECT_ID)).
    type: list
    elements: str
    default: []
seealso:
  - module: nixforge.images.metal_device
notes:
  - Use C(playbooks/reap.yml) to remove what this module finds in every provider.
"""

EXAMPLES = r"""
- name: Everything of one build in the project
  nixforge.images.metal_build_info:
    project_ids: ["{{ lookup('env', 'METAL_PROJECT_ID') }}"]
    build_id: sd-aarch64-7
  register: build
"""

RETURN = r"""
builds:
  description: One entry per build that has resources in the projects, sorted by build id.
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
          description: The kind of resource, one of V(device), V(ssh_key).
          type: str
          sample: device
        id:
          description: The provider's id of the resource.
          type: str
        name:
          description: Its name (or the id when it has none).
          type: str
        location:
          description: The project id.
          type: str
        state:
          description: Its state as the provider reports it, if it has one.
          type: str
        product:
          description: Always false (nothing in Metal is a build's product).
          type: bool
"""

from typing import Any, Dict, List, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._build_info import (
    BuildInfoModule,
    build_info_argument_spec,
)
from ansible_collections.nixforge.images.plugins.module_utils._metal._client import (
    REQUIRED_LIBRARIES,
    metal_argument_spec,
    metal_client,
)
from ansible_collections.nixforge.images.plugins.module_utils._metal._discovery import list_builds


class MetalBuildInfo(BuildInfoModule):
    argument_spec = dict(build_info_argument_spec(), project_ids=dict(type="list", elements="str", default=[]))
    provider_argument_spec = metal_argument_spec()
    required_libraries = REQUIRED_LIBRARIES
    location_option = "project_ids"
    location_default_option = "project_id"

    def list_location(self, location: Optional[str], build_ids: List[str]) -> List[Dict[str, Any]]:
        client = metal_client(dict(self.params, project_id=location))
        return list_builds(client, str(location), build_ids)


def main() -> None:
    MetalBuildInfo().execute()


if __name__ == "__main__":
    main()
