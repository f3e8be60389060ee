#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: do_droplet
short_description: Remove the DigitalOcean droplets of a build
version_added: 0.2.0
description:
  - Deletes every droplet tagged C(nixforge-build-id:<build id>) in the DigitalOcean account and waits until
    none of them is listed any more.
  - The collection creates no droplets itself; droplets with our tags come from other tools or older setups,
    and C(playbooks/reap.yml) removes them with this module, as it removes the other providers' builders.
  - Check mode lists the droplets that would be deleted. A droplet that is already gone is no error.
author:
  - nixforge.images contributors (@nixforge)
extends_documentation_fragment:
  - nixforge.images.common
  - nixforge.images.common.wait
  - nixforge.images.digitalocean
  - nixforge.images.attributes
  - nixforge.images.attributes.cloud
  - nixforge.images.attributes.diff_none
  - nixforge.images.attributes.actiongroup_digitalocean
options:
  state:
    description: V(absent) deletes the build's droplets; it is the only state.
    type: str
    choices: [absent]
    default: absent
"""

EXAMPLES = r"""
- name: Remove every droplet of build do-image-42
  nixforge.images.do_droplet:
    state: absent
    build_id: do-image-42

- name: List what would be removed
  nixforge.images.do_droplet:
    build_id: do-image-42
  check_mode: true
  register: droplets
"""

RETURN = r"""
removed:
  description: The droplets deleted (in check mode, those that would be).
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: The droplet's id.
      type: str
      sample: "390000001"
    name:
      description: Its name.
      type: str
      sample: nixforge-builder-do-image-42
    region:
      description: Its region.
      type: str
      sample: nyc3
actions:
  description: What the module did (or would do, in check mode), one line per droplet.
  returned: changed
  type: list
  elements: str
  sample: ["delete droplet nixforge-builder-do-image-42 (390000001) in nyc3"]
"""

from typing import Any, Dict, List

from ansible_collections.nixforge.images.plugins.module_utils._discovery_do import (
    build_droplets,
    delete_droplet,
    droplets_gone,
)
from ansible_collections.nixforge.images.plugins.module_utils.common import Action, NixforgeModule
from ansible_collections.nixforge.images.plugins.module_utils.digitalocean import (
    REQUIRED_LIBRARIES,
    digitalocean_argument_spec,
    digitalocean_client,
)
from ansible_collections.nixforge.images.plugins.module_utils.waiter import wait_for


class DoDroplet(NixforgeModule):
    argument_spec = dict(state=dict(type="str", choices=["absent"], default="absent"))
    provider_argument_spec = digitalocean_argument_spec()
    required_libraries = REQUIRED_LIBRARIES

    def prepare(self) -> None:
        self.client = digitalocean_client(self.params)
        self.found: List[Dict[str, Any]] = build_droplets(self.client, self.identity.build_id)

    def plan(self) -> List[Action]:
        actions = []
        for droplet in self.found:
            region = (droplet.get("region") or {}).get("slug") or "?"
            text = "delete droplet %s (%s) in %s" % (droplet.get("name"), droplet.get("id"), region)
            actions.append(Action(text, lambda d=droplet: delete_droplet(self.client, d["id"])))
        if actions:
            actions.append(Action("wait until the droplets are gone", self.wait_gone))
        return actions

    def wait_gone(self) -> None:
        if not self.params["wait"]:
            return
        ids = [d["id"] for d in self.found]
        wait_for(
            lambda: droplets_gone(self.client, self.identity.build_id, ids),
            self.params["wait_timeout"],
            "the droplets of build %s to be gone" % self.identity.build_id,
            option_value=self.params["wait_timeout"],
        )

    def describe(self) -> Dict[str, Any]:
        return {
            "removed": [
                {"id": str(d.get("id")), "name": d.get("name"), "region": (d.get("region") or {}).get("slug")}
                for d in self.found
            ]
        }


def main() -> None:
    DoDroplet().execute()


if __name__ == "__main__":
    main()
