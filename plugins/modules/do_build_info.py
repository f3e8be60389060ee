#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: do_build_info
short_description: List the custom images, droplets and SSH keys of builds in a DigitalOcean account
version_added: 0.2.0
description:
  - Lists everything of ours in the DigitalOcean account, grouped by build; custom images and droplets tagged
    C(nixforge-build-id:<id>), and account SSH keys named C(nixforge-<id>-<expiry>) (keys have no tags; the
    expiry in the name counts as their C(nixforge-expires-at)).
  - An image that is C(available) is the finished product of a build, not a leftover; it is marked
    RV(builds[].resources[].product). C(playbooks/reap.yml) never removes a product because its build expired,
    only images stuck in another state (a failed or hanging import), unless you name the build id.
  - A build whose resources carry no readable C(nixforge-expires-at) counts as expired (a leak); a build
    found in several places expires at the latest expiry any of its resources carries.
  - Reads only. Pair it with M(nixforge.images.do_custom_image) in C(state=absent), as C(playbooks/reap.yml) does.
author:
  - nixforge.images contributors (@nixforge)
extends_documentation_fragment:
  - nixforge.images.digitalocean
  - nixforge.images.attributes
  - nixforge.images.attributes.diff_none
  - nixforge.images.attributes.actiongroup_digitalocean
  - nixforge.images.build_info
seealso:
  - module: nixforge.images.do_custom_image
notes:
  - Use C(playbooks/reap.yml) to remove what this module finds in every provider.
"""

EXAMPLES = r"""
- name: Images left by failed imports of expired builds
  nixforge.images.do_build_info:
    expired: true
  register: expired_builds

- name: Show them
  ansible.builtin.debug:
    msg: "{{ expired_builds.builds | map(attribute='resources') | flatten | rejectattr('product') | list }}"
"""

RETURN = r"""
builds:
  description: One entry per build that has resources, sorted by build id.
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
          description: The kind of resource, one of V(image), V(droplet), V(ssh_key) (an account key named
            C(nixforge-<build id>-<expiry>), see M(nixforge.images.do_ssh_key)).
          type: str
          sample: image
        id:
          description: The provider's id of the resource.
          type: str
        name:
          description: Its name (or the id when it has none).
          type: str
        location:
          description: The image's regions (comma separated) or the droplet's region.
          type: str
        state:
          description: Its state as the provider reports it, if it has one.
          type: str
        product:
          description: True for an C(available) image, the product of a finished build, kept by expiry-based reaping.
          type: bool
"""

from typing import Any, Dict, List, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._build_info import (
    BuildInfoModule,
    build_info_argument_spec,
)
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._client import (
    REQUIRED_LIBRARIES,
    digitalocean_argument_spec,
    digitalocean_client,
)
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._discovery import list_builds


class DoBuildInfo(BuildInfoModule):
    argument_spec = build_info_argument_spec()
    provider_argument_spec = digitalocean_argument_spec()
    required_libraries = REQUIRED_LIBRARIES

    def list_location(self, location: Optional[str], build_ids: List[str]) -> List[Dict[str, Any]]:
        return list_builds(digitalocean_client(self.params), build_ids)


def main() -> None:
    DoBuildInfo().execute()


if __name__ == "__main__":
    main()
