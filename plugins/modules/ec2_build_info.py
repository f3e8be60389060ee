#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: ec2_build_info
short_description: List the resources of builds in EC2 regions, by build
version_added: 0.2.0
description:
  - Lists everything of ours in one or more EC2 regions, grouped by build; instances (not terminated),
    EC2 fleets, open or active spot requests, launch templates, security groups, key pairs and volumes that carry
    the C(nixforge-build-id) tag. Tags are filtered on the EC2 side.
  - A build whose resources carry no readable C(nixforge-expires-at) counts as expired (a leak); a build
    found in several regions expires at the latest expiry any of its resources carries.
  - Reads only. Pair it with M(nixforge.images.ec2_spot_host) in C(state=absent), as C(playbooks/reap.yml) does.
author:
  - nixforge.images contributors (@nixforge)
extends_documentation_fragment:
  - nixforge.images.ec2
  - nixforge.images.attributes
  - nixforge.images.attributes.diff_none
  - nixforge.images.attributes.actiongroup_aws
  - nixforge.images.build_info
options:
  regions:
    description:
      - The regions to look in. Default, the one region of O(region) (or E(AWS_REGION)).
    type: list
    elements: str
    default: []
seealso:
  - module: nixforge.images.ec2_spot_host
notes:
  - Use C(playbooks/reap.yml) to remove what this module finds in every provider.
"""

EXAMPLES = r"""
- name: Every expired build in two regions
  nixforge.images.ec2_build_info:
    regions: [us-east-1, eu-central-1]
    expired: true
  register: expired_builds

- name: Remove them (with every region they have resources in)
  nixforge.images.ec2_spot_host:
    state: absent
    region: "{{ item.1 }}"
    build_id: "{{ item.0 }}"
  loop: >-
    {{ expired_builds.builds | map(attribute='build_id')
       | product(['us-east-1', 'eu-central-1']) | list }}
"""

RETURN = r"""
builds:
  description: One entry per build that has resources in the regions, sorted by build id.
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
          description:
            - The kind of resource, one of
              V(fleet),
              V(spot_request),
              V(instance),
              V(launch_template),
              V(security_group),
              V(volume),
              V(key_pair).
          type: str
          sample: security_group
        id:
          description: The provider's id of the resource.
          type: str
        name:
          description: Its name (or the id when it has none).
          type: str
        location:
          description: The region.
          type: str
        state:
          description: Its state as the provider reports it, if it has one.
          type: str
        product:
          description: Always false (nothing in EC2 is a build's product).
          type: bool
"""

from typing import Any, Dict, List, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._build_info import (
    BuildInfoModule,
    build_info_argument_spec,
)
from ansible_collections.nixforge.images.plugins.module_utils._ec2._client import (
    REQUIRED_LIBRARIES,
    ec2_argument_spec,
    ec2_client,
)
from ansible_collections.nixforge.images.plugins.module_utils._ec2._discovery import list_builds


class Ec2BuildInfo(BuildInfoModule):
    argument_spec = dict(build_info_argument_spec(), regions=dict(type="list", elements="str", default=[]))
    provider_argument_spec = ec2_argument_spec()
    required_libraries = REQUIRED_LIBRARIES
    location_option = "regions"
    location_default_option = "region"

    def list_location(self, location: Optional[str], build_ids: List[str]) -> List[Dict[str, Any]]:
        client = ec2_client(dict(self.params, region=location))
        return list_builds(client, str(location), build_ids)


def main() -> None:
    Ec2BuildInfo().execute()


if __name__ == "__main__":
    main()
