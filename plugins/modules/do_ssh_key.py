#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: do_ssh_key
short_description: Register a build's SSH public key in the DigitalOcean account, or remove the build's keys
version_added: 0.2.0
description:
  - With O(state=present), registers O(public_key) as an account SSH key (C(/v2/account/keys)), so that a droplet
    created with its id installs it for C(root). A key of the build with the same public key is adopted, not
    registered again.
  - DigitalOcean SSH keys have no tags. The build id and the expiry are therefore written into the key's name,
    C(nixforge-<build id>-<expiry>) with the expiry as C(YYYYMMDDTHHMMSSZ) in UTC, for example
    C(nixforge-do-image-42-20261206T230000Z). That name is how this module, the reaper (C(playbooks/reap.yml))
    and M(nixforge.images.do_build_info) find a build's keys and know when they expire. Do not rename them.
  - With O(state=absent), deletes every account key whose name carries the build id, whatever its expiry.
  - Check mode reports what would be registered or deleted.
author:
  - nixforge.images contributors (@nixforge)
extends_documentation_fragment:
  - nixforge.images.common
  - nixforge.images.digitalocean
  - nixforge.images.attributes
  - nixforge.images.attributes.cloud
  - nixforge.images.attributes.diff_none
  - nixforge.images.attributes.actiongroup_digitalocean
options:
  state:
    description: V(present) registers (or adopts) the key; V(absent) deletes the build's keys.
    type: str
    choices: [present, absent]
    default: present
  public_key:
    description: The OpenSSH public key line (the C(.pub) file's content). Required with O(state=present).
    type: str
notes:
  - O(tags) cannot be stored (DigitalOcean keys have none) and are ignored; O(pipeline) is not part of the name.
"""

EXAMPLES = r"""
- name: Register the build's login key
  nixforge.images.do_ssh_key:
    public_key: "{{ lookup('file', state_dir ~ '/id_ed25519.pub') }}"
    build_id: do-image-42
    ttl: 1h
  register: key

- name: Remove the build's keys
  nixforge.images.do_ssh_key:
    state: absent
    build_id: do-image-42
"""

RETURN = r"""
ssh_key:
  description: The key (O(state=present)); in check mode before it exists, without id and fingerprint.
  returned: state is present
  type: dict
  contains:
    id: {description: DigitalOcean's id of the key., type: str, sample: "512190"}
    name: {description: Its name (build id and expiry)., type: str, sample: nixforge-do-image-42-20261206T230000Z}
    fingerprint: {description: Its MD5 fingerprint., type: str, sample: "3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45"}
    public_key: {description: The public key., type: str}
    build_id: {description: The build id read from the name., type: str, sample: do-image-42}
    expires_at: {description: The expiry read from the name., type: str, sample: "2026-12-06T23:00:00Z"}
created:
  description: Whether this run registered the key (false when adopted).
  returned: state is present
  type: bool
removed:
  description: The keys deleted (in check mode, those that would be).
  returned: state is absent
  type: list
  elements: dict
  contains:
    id: {description: The key's id., type: str, sample: "512190"}
    name: {description: Its name., type: str, sample: nixforge-do-image-42-20261206T230000Z}
actions:
  description: What the module did (or would do, in check mode).
  returned: changed
  type: list
  elements: str
  sample: ["register SSH key nixforge-do-image-42-20261206T230000Z"]
"""

from typing import Any, Dict, List, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._module import Action, NixforgeModule
from ansible_collections.nixforge.images.plugins.module_utils._base._sshkeys import validate_public_key
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._client import (
    REQUIRED_LIBRARIES,
    digitalocean_argument_spec,
    digitalocean_client,
)
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._keys import (
    build_keys,
    create_key,
    delete_key,
    key_name,
    key_view,
    same_public_key,
)


class DoSshKey(NixforgeModule):
    argument_spec = dict(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        public_key=dict(type="str", no_log=False),
    )
    module_kwargs = dict(required_if=[("state", "present", ["public_key"])])
    provider_argument_spec = digitalocean_argument_spec()
    required_libraries = REQUIRED_LIBRARIES
    uses_wait = False

    def prepare(self) -> None:
        self.client = digitalocean_client(self.params)
        self.found: List[Dict[str, Any]] = build_keys(self.client, self.identity.build_id)
        self.key: Optional[Dict[str, Any]] = None
        if self.params["state"] == "present":
            self.public_key = validate_public_key(self.params["public_key"], "public_key")
            matching = [k for k in self.found if same_public_key(k.get("public_key"), self.public_key)]
            self.key = matching[0] if matching else None
            if self.key is None:
                self.identity.require_future_expiry()

    @property
    def name(self) -> str:
        return key_name(self.identity.build_id, self.identity.expires_at)

    def plan(self) -> List[Action]:
        if self.params["state"] == "present":
            if self.key is not None:
                return []
            return [Action("register SSH key %s" % self.name, self.create, undo=self.undo_create)]
        return [
            Action(
                "delete SSH key %s (%s)" % (k.get("name"), k.get("id")), lambda k=k: delete_key(self.client, k["id"])
            )
            for k in self.found
        ]

    def create(self) -> None:
        self.key = create_key(self.client, self.name, self.public_key)
        self.result["created"] = True

    def undo_create(self) -> None:
        for key in build_keys(self.client, self.identity.build_id):
            if same_public_key(key.get("public_key"), self.public_key):
                delete_key(self.client, key["id"])

    def describe(self) -> Dict[str, Any]:
        if self.params["state"] == "absent":
            return {"removed": [{"id": str(k.get("id")), "name": k.get("name")} for k in self.found]}
        if self.key is None:  # check mode: what would be registered
            view = key_view({"name": self.name, "public_key": self.public_key})
            view.update(id=None)
            return {"ssh_key": view, "created": False}
        return {"ssh_key": key_view(self.key), "created": bool(self.result.get("created"))}


def main() -> None:
    DoSshKey().execute()


if __name__ == "__main__":
    main()
