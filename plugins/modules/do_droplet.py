#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: do_droplet
short_description: Create a short-lived DigitalOcean droplet of a build, or remove the build's droplets
version_added: 0.2.0
description:
  - With O(state=present), creates a droplet tagged with the build's C(nixforge-build-id), C(nixforge-pipeline)
    and C(nixforge-expires-at), and waits until it is C(active) and has a public IPv4 address. A droplet of the
    same build and O(name) that exists already is adopted, not created again. The boot check of the
    C(do_image_publish) role (action C(nixforge.images.do_boot_check)) creates its droplet with this module.
  - The droplet does not remove itself at its expiry (DigitalOcean has no such setting); C(playbooks/reap.yml)
    removes droplets whose C(nixforge-expires-at) has passed.
  - With O(state=absent), deletes every droplet tagged C(nixforge-build-id:<build id>) (only those named O(name)
    when it is given) and waits until none of them is listed any more. A droplet that is already gone is no
    error.
  - Check mode reports what would be created or deleted.
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
    description: V(present) creates (or adopts) the droplet; V(absent) deletes the build's droplets.
    type: str
    choices: [present, absent]
    default: absent
  name:
    description:
      - The droplet's name. Required with O(state=present); with O(state=absent) only droplets of this name
        are deleted.
    type: str
  region:
    description: Region slug of the droplet, for example V(nyc3). Required with O(state=present).
    type: str
  image:
    description: The image to boot, a custom image id (as text or number) or a public image slug. Required with
      O(state=present).
    type: str
  size:
    description:
      - Size slug, for example V(s-1vcpu-1gb).
      - Without it, the cheapest size available in O(region) whose disk holds O(min_disk_size) GB, chosen from
        C(GET /v2/sizes) (or, where the endpoint has no size list, from a table of DigitalOcean's published
        prices).
    type: str
  min_disk_size:
    description: Smallest disk (GB) the size must have when O(size) is not given; use the image's
      C(min_disk_size).
    type: int
    default: 0
  ssh_keys:
    description: Account SSH key ids or fingerprints installed for C(root) (see M(nixforge.images.do_ssh_key)).
    type: list
    elements: str
    default: []
  user_data:
    description:
      - User data for cloud-init (C(#cloud-config) or a script). Never logged, because it may carry a host key.
    type: str
notes:
  - O(wait_timeout) is the wait for C(active) and an address at create, or for the droplets to be gone at removal.
    It does not wait for the operating system to boot; M(nixforge.images.do_boot_check) does.
  - DigitalOcean bills droplets per second, with a minimum of 60 seconds (or USD 0.01, whichever is higher).
"""

EXAMPLES = r"""
- name: Boot a droplet from the build's image
  nixforge.images.do_droplet:
    state: present
    name: nixforge-do-image-42-boot
    region: nyc3
    image: "{{ image.id }}"
    min_disk_size: "{{ image.min_disk_size }}"
    ssh_keys: ["{{ key.ssh_key.id }}"]
    build_id: do-image-42
    pipeline: do-image
    ttl: 1h
    wait_timeout: 300
  register: droplet

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
droplet:
  description: The droplet (O(state=present); in check mode without an existing one, what would be created).
  returned: state is present
  type: dict
  contains:
    id: {description: The droplet's id (absent in check mode before it exists)., type: str, sample: "390000001"}
    name: {description: Its name., type: str, sample: nixforge-do-image-42-boot}
    status: {description: Its status., type: str, sample: active}
    region: {description: Its region., type: str, sample: nyc3}
    size: {description: Its size slug., type: str, sample: s-1vcpu-1gb}
    image: {description: The id of the image it runs., type: int, sample: 7000001}
    public_ipv4: {description: Its public IPv4 address., type: str, sample: 203.0.113.10}
    price_hourly: {description: The size's price in USD per hour., type: float, sample: 0.00893}
    created_at: {description: When DigitalOcean created it., type: str, sample: "2026-12-06T21:00:00Z"}
    tags: {description: "Its tags (C(key:value) strings).", type: list, elements: str}
created:
  description: Whether this run created the droplet (false when adopted).
  returned: state is present
  type: bool
removed:
  description: The droplets deleted (in check mode, those that would be).
  returned: state is absent
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
  description: What the module did (or would do, in check mode), one line per step.
  returned: changed
  type: list
  elements: str
  sample: ["delete droplet nixforge-builder-do-image-42 (390000001) in nyc3"]
"""

from typing import Any, Dict, List, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._module import Action, NixforgeModule
from ansible_collections.nixforge.images.plugins.module_utils._base._waiter import wait_for
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._client import (
    REQUIRED_LIBRARIES,
    digitalocean_argument_spec,
    digitalocean_client,
    do_tags,
)
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._droplets import (
    LIVE_STATES,
    build_droplets,
    cheapest_size,
    delete_droplet,
    droplet_body,
    droplet_view,
    droplets_gone,
    get_droplet,
    list_sizes,
    public_ipv4,
    region_slug,
    size_price,
)


class DoDroplet(NixforgeModule):
    argument_spec = dict(
        state=dict(type="str", choices=["present", "absent"], default="absent"),
        name=dict(type="str"),
        region=dict(type="str"),
        image=dict(type="str"),
        size=dict(type="str"),
        min_disk_size=dict(type="int", default=0),
        ssh_keys=dict(type="list", elements="str", default=[], no_log=False),
        user_data=dict(type="str", no_log=True),
    )
    module_kwargs = dict(required_if=[("state", "present", ["name", "region", "image"])])
    provider_argument_spec = digitalocean_argument_spec()
    required_libraries = REQUIRED_LIBRARIES

    def prepare(self) -> None:
        self.client = digitalocean_client(self.params)
        found = build_droplets(self.client, self.identity.build_id)
        name = self.params["name"]
        self.found: List[Dict[str, Any]] = [d for d in found if name is None or d.get("name") == name]
        self.droplet: Optional[Dict[str, Any]] = None
        self.price: Optional[float] = None
        if self.params["state"] == "present":
            live = [d for d in self.found if d.get("status") in LIVE_STATES]
            self.droplet = live[0] if live else None
            if self.droplet is not None and not (self.droplet.get("size") or {}).get("price_hourly"):
                self.price = size_price(list_sizes(self.client), str(self.droplet.get("size_slug")))
            if self.droplet is None:
                self.identity.require_future_expiry()
                self.size = self.choose_size()

    def choose_size(self) -> str:
        sizes = list_sizes(self.client)
        if self.params["size"]:
            self.price = size_price(sizes, self.params["size"])
            return self.params["size"]
        chosen = cheapest_size(sizes, self.params["region"], self.params["min_disk_size"])
        self.price = float(chosen["price_hourly"])
        return str(chosen["slug"])

    def plan(self) -> List[Action]:
        if self.params["state"] == "present":
            return self.plan_present()
        actions = []
        for droplet in self.found:
            text = "delete droplet %s (%s) in %s" % (
                droplet.get("name"),
                droplet.get("id"),
                region_slug(droplet) or "?",
            )
            actions.append(Action(text, lambda d=droplet: delete_droplet(self.client, d["id"])))
        if actions:
            actions.append(Action("wait until the droplets are gone", self.wait_gone))
        return actions

    def plan_present(self) -> List[Action]:
        actions = []
        if self.droplet is None:
            text = "create droplet %s (%s) in %s from image %s" % (
                self.params["name"],
                self.size,
                self.params["region"],
                self.params["image"],
            )
            actions.append(Action(text, self.create, undo=self.undo_create))
        if self.params["wait"] and (self.droplet is None or not self.ready(self.droplet)):
            actions.append(Action("wait until the droplet is active with an address", self.wait_active))
        return actions

    def create(self) -> None:
        body = droplet_body(self.params, do_tags(self.identity.tags()), list(self.params["ssh_keys"]), self.size)

        def find() -> Optional[Dict[str, Any]]:
            existing = [d for d in build_droplets(self.client, self.identity.build_id) if d["name"] == body["name"]]
            return {"droplet": existing[0]} if existing else None

        answer = self.client.create("droplets", body, find, "Creating droplet %s" % body["name"], list(body))
        self.droplet = answer["droplet"]
        self.result["created"] = True

    def undo_create(self) -> None:
        # a create whose answer was lost left no id here: delete by build and name
        for droplet in build_droplets(self.client, self.identity.build_id):
            if droplet.get("name") == self.params["name"]:
                delete_droplet(self.client, droplet["id"])

    @staticmethod
    def ready(droplet: Dict[str, Any]) -> bool:
        return droplet.get("status") == "active" and public_ipv4(droplet) is not None

    def wait_active(self) -> None:
        droplet_id = (self.droplet or {}).get("id")

        def poll() -> bool:
            self.droplet = get_droplet(self.client, droplet_id) or self.droplet
            return bool(self.droplet) and self.ready(self.droplet)

        wait_for(
            poll,
            self.params["wait_timeout"],
            "droplet %s to be active with a public address" % droplet_id,
            option_value=self.params["wait_timeout"],
        )

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
        if self.params["state"] == "present":
            return self.describe_present()
        return {
            "removed": [{"id": str(d.get("id")), "name": d.get("name"), "region": region_slug(d)} for d in self.found]
        }

    def describe_present(self) -> Dict[str, Any]:
        if self.droplet is None:  # check mode: what would be created
            view = {"name": self.params["name"], "region": self.params["region"], "size": self.size}
            view.update(price_hourly=self.price, image=self.params["image"])
            return {"droplet": view, "created": False}
        return {"droplet": droplet_view(self.droplet, self.price), "created": bool(self.result.get("created"))}


def main() -> None:
    DoDroplet().execute()


if __name__ == "__main__":
    main()
