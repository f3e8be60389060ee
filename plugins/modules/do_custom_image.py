#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: do_custom_image
short_description: DigitalOcean custom image of a build, imported from a URL
version_added: 0.2.0
description:
  - Imports a disk image (raw, qcow2, VHDX, VDI or VMDK, optionally compressed with gzip or bzip2) from a URL
    DigitalOcean can fetch as a custom image, waits until it is C(available), and makes it available in more
    regions with C(transfer) image actions, waiting for each.
  - The image is tagged with the build identity (C(nixforge-build-id:<id>), C(nixforge-pipeline:<name>),
    C(nixforge-expires-at:<UTC time>)). A second run with the same O(name) and O(build_id) adopts the image
    (still importing or available) and never imports twice; it reports no change when the image is already
    available in every requested region.
  - When DigitalOcean refuses the image it removes it and gives a reason; the module fails with that reason.
    When O(wait_timeout) runs out the module fails, naming the option. In both cases, and when a later step
    fails, the image this run imported is deleted again (RV(rolled_back)); its id stays in the result.
  - The region, the extra regions and the distribution are checked before anything is created.
  - O(state=absent) deletes the build's image of that O(name), or every custom image of the build when
    O(name) is not given.
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
  name:
    description:
      - Name of the custom image. Together with O(build_id) it identifies the image.
      - Required with O(state=present). With O(state=absent) and no O(name), every custom image of the build
        is deleted.
    type: str
  state:
    description:
      - V(present) imports the image (or adopts the build's image of that name), waits until it is available
        and transfers it to O(regions). V(absent) deletes it.
    type: str
    choices: [present, absent]
    default: present
  url:
    description:
      - URL DigitalOcean fetches the image from (it sends a HEAD request, then a GET). It must be reachable from
        the internet without credentials and must answer HEAD, for example a public bucket URL under an
        unguessable name.
      - A URL with a query string (a pre-signed or authorized URL) fails before anything is imported, because
        DigitalOcean reads the file name from the URL's path and refuses such URLs.
      - Required when the build has no image of this name yet; not used when the image is adopted. An image
        whose import failed (status V(deleted)) or that was deleted is never adopted.
      - Treated as a secret (an unguessable or authorized URL grants download); only its host is shown.
    type: str
  src:
    description:
      - Path on the controller of the image file that O(url) serves (or will serve once uploaded).
      - When given, the file is checked before anything is imported, in check mode too (so before an upload
        when a check-mode run comes first, as in the C(nixforge.images.do_image_publish) role). Its format and
        compression are read from its bytes (raw, qcow2, VHDX, VDI or VMDK, uncompressed or inside gzip or
        bzip2, the only compressions DigitalOcean takes) and its uncompressed size must be under DigitalOcean's
        100 GiB. A file DigitalOcean would refuse fails naming this option, with the reason and the fix.
    type: path
  region:
    description:
      - Slug of the region the image is imported into, for example V(nyc3). Required with O(state=present).
    type: str
  regions:
    description:
      - More region slugs the image must be available in; each is reached by a C(transfer) image action, and
        the module waits for each (with O(wait=true)).
    type: list
    elements: str
    default: []
  distribution:
    description:
      - Distribution of the image, one of DigitalOcean's names (matched case-insensitively) V(Arch Linux),
        V(CentOS), V(CoreOS), V(Debian), V(Fedora), V(Fedora Atomic), V(FreeBSD), V(Gentoo), V(openSUSE),
        V(RancherOS), V(Rocky Linux), V(Ubuntu) or V(Unknown). DigitalOcean itself would store any other value
        as V(Unknown); the module fails instead.
    type: str
    default: Unknown
  description:
    description:
      - Free-form description of the image. An adopted image's description (and distribution) is updated
        when it differs.
    type: str
  wait:
    description:
      - Wait until the image is available (and transferred to O(regions)), or with O(state=absent) gone.
      - With O(wait=false) the import is started and the module returns; O(regions) are only reached once the
        image is available, by a later run.
    type: bool
    default: true
  wait_timeout:
    description:
      - How many seconds the whole run may wait, import and transfers together. When they run out the module
        fails naming this option, and deletes the image it imported in this run.
      - DigitalOcean takes minutes for a small image and up to an hour for large ones.
    type: int
    default: 1800
  poll_interval:
    description:
      - Seconds between two looks at the image or a transfer while waiting.
    type: float
    default: 5.0
seealso:
  - name: DigitalOcean custom images
    description: Formats, size limits and how imports work.
    link: https://docs.digitalocean.com/products/custom-images/
"""

EXAMPLES = r"""
- name: Import the build's image and make it available in three regions
  nixforge.images.do_custom_image:
    name: nixos-24.11-do-42
    build_id: do-image-42
    ttl: 7d
    url: "{{ b2_upload.url }}"
    region: nyc3
    regions: [ams3, sgp1]
    distribution: Unknown
    description: NixOS 24.11, built by nixforge.images
    tags:
      team: ops
  register: do_image

- name: Show the image id
  ansible.builtin.debug:
    msg: "Image {{ do_image.image.id }} in {{ do_image.image.regions | join(', ') }}"

- name: Remove every custom image of the build
  nixforge.images.do_custom_image:
    build_id: do-image-42
    state: absent

- name: Token and endpoint once for every DigitalOcean task
  module_defaults:
    group/nixforge.images.digitalocean:
      oauth_token: "{{ vault_do_token }}"
  block:
    - name: Import
      nixforge.images.do_custom_image:
        name: nixos-do-43
        build_id: do-image-43
        url: "{{ image_url }}"
        region: fra1
"""

RETURN = r"""
changed:
  description: Whether an image was imported, updated, transferred or deleted (or would be, in check mode).
  returned: always
  type: bool
actions:
  description: What was done (or would be done in check mode), one line each.
  returned: when something changed
  type: list
  elements: str
  sample: ["import image nixos-do-42 from https://f000.example.com/... into nyc3", "transfer image nixos-do-42 to ams3"]
image:
  description: The image. Empty in check mode when it would be imported.
  returned: when O(state=present)
  type: dict
  contains:
    id: {description: Image id., type: int, sample: 190000001}
    name: {description: Image name., type: str, sample: nixos-do-42}
    status: {description: "V(NEW) while importing, V(available) when done.", type: str, sample: available}
    regions: {description: Region slugs the image is available in., type: list, elements: str, sample: [nyc3, ams3]}
    size_gigabytes: {description: Size of the image in GB., type: float, sample: 2.34}
    min_disk_size: {description: Smallest disk (GB) a Droplet needs for it., type: int, sample: 20}
    distribution: {description: Distribution., type: str, sample: Unknown}
    description: {description: Description., type: str}
    tags: {description: "DigitalOcean tags (C(key:value) strings).", type: list, elements: str}
    created_at: {description: Creation time (UTC)., type: str, sample: "2026-11-28T09:00:00Z"}
    error_message: {description: DigitalOcean's reason when an import failed., type: str}
imported:
  description: Whether this run imported the image (false when an existing image was adopted).
  returned: when O(state=present)
  type: bool
transferred:
  description: Regions this run transferred the image to (or would, in check mode).
  returned: when O(state=present)
  type: list
  elements: str
removed:
  description: Ids of the images O(state=absent) removed (or would remove in check mode).
  returned: when O(state=absent)
  type: list
  elements: int
rolled_back:
  description: Actions of this run undone after a failure (the imported image deleted again).
  returned: on failure after the import started
  type: list
  elements: str
retries:
  description: How many API calls were retried after throttling, a 5xx answer or a dropped connection.
  returned: always
  type: int
source:
  description: What the check of O(src) read from the file.
  returned: when O(src) is given and O(state=present)
  type: dict
  contains:
    format: {description: "V(raw), V(qcow2), V(vhdx), V(vdi) or V(vmdk).", type: str, sample: qcow2}
    compression: {description: "V(gzip), V(bzip2) or null.", type: str, sample: gzip}
    virtual_size: {description: Bytes of the disk the image describes., type: int, sample: 2147483648}
    uncompressed_size:
      description: Bytes of the decompressed file when it was read to the end, else null.
      type: int
    file_size: {description: Bytes of the file as uploaded., type: int, sample: 412345678}
build:
  description: The build identity the image carries.
  returned: always
  type: dict
  sample: {"build_id": "do-image-42", "pipeline": "default", "expires_at": "2026-11-28T18:00:00Z"}
"""

from typing import Any, Dict, List, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._module import Action, NixforgeModule
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._client import (
    REQUIRED_LIBRARIES,
    DigitalOceanClient,
    check_distribution,
    check_regions,
    digitalocean_argument_spec,
    digitalocean_client,
    do_tags,
)
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._image import (
    ImageEngine,
    display_url,
    view,
)
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._preflight import (
    ImageRefused,
    check_import_url,
    inspect_image,
)


class DoCustomImage(NixforgeModule):
    argument_spec = dict(
        name=dict(type="str"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        url=dict(type="str", no_log=True),
        src=dict(type="path"),
        region=dict(type="str"),
        regions=dict(type="list", elements="str", default=[]),
        distribution=dict(type="str", default="Unknown"),
        description=dict(type="str"),
        poll_interval=dict(type="float", default=5.0),
    )
    module_kwargs = dict(required_if=[["state", "present", ["name", "region"]]])
    provider_argument_spec = digitalocean_argument_spec()
    default_wait_timeout = 1800
    required_libraries = REQUIRED_LIBRARIES

    client: DigitalOceanClient
    images: ImageEngine
    image: Optional[Dict[str, Any]] = None
    targets: List[Dict[str, Any]]
    will_import = False
    import_text = ""
    planned_transfers: List[str] = []

    @property
    def wanted_regions(self) -> List[str]:
        regions = [self.params["region"], *(self.params["regions"] or [])]
        return [r for i, r in enumerate(regions) if r and r not in regions[:i]]

    # -- flow ----------------------------------------------------------------------

    def prepare(self) -> None:
        self.result.update(build=self.identity.as_dict(), retries=0)
        self.client = digitalocean_client(self.params)
        self.images = ImageEngine(self.client, self.identity.build_id, self.params.get("name"),
                                  self.params["wait_timeout"], self.params["poll_interval"])  # fmt: skip
        if self.params["state"] == "absent":
            self.targets = self.images.build_images(present_only=False)
            return
        self.result.update(image={}, imported=False, transferred=[])
        if self.params.get("src"):
            self.check_src(self.params["src"])  # on the controller, before any API call
        self.distribution = check_distribution(self.params["distribution"])
        self.tags = do_tags(self.identity.tags())
        self.identity.require_future_expiry()
        regions = self.client.regions()  # a bad token fails here, naming oauth_token
        check_regions(regions, [self.params["region"]], "region")
        check_regions(regions, self.params["regions"] or [], "regions")
        found = self.images.build_images(present_only=True)
        if len(found) > 1:
            self.warn("build %s has %d images named %s; adopting %s" % (
                self.identity.build_id, len(found), self.params["name"], found[0]["id"]))  # fmt: skip
        self.image = found[0] if found else None
        if self.image is None:
            self.check_url()
        elif self.image.get("status") != "available" and self.params["wait"] and not self.check_mode:
            # adopted while importing (an earlier run timed out or died): its outcome decides the plan
            self.image = self.wait_available(self.image["id"])

    def plan(self) -> List[Action]:
        if self.params["state"] == "absent":
            return [
                Action("delete image %s (%s)" % (i.get("name"), i["id"]), lambda i=i: self.delete(i))
                for i in self.targets
            ]
        name = self.params["name"]
        actions: List[Action] = []
        if self.image is None:
            self.import_text = "import image %s from %s into %s" % (
                name, display_url(self.params["url"]), self.params["region"])  # fmt: skip
            actions.append(Action(self.import_text, self.import_image, undo=self.delete_imported))
            self.will_import = True
            ready, present = self.params["wait"], [self.params["region"]]
        elif self.image.get("status") != "available" and self.params["wait"]:
            # check mode only (a real run waited in prepare): assume the import will succeed
            ready, present = True, [self.params["region"], *(self.image.get("regions") or [])]
        else:
            updates = self.updates()
            if updates:
                actions.append(Action("update image %s (%s)" % (name, ", ".join(sorted(updates))),
                                      lambda: self.update(updates)))  # fmt: skip
            ready, present = self.image.get("status") == "available", list(self.image.get("regions") or [])
        missing = [r for r in self.wanted_regions if r not in present]
        if missing and not ready:
            self.warn("image %s is not available yet, so it was not transferred to %s; run again with wait=true"
                      % (name, ", ".join(missing)))  # fmt: skip
            return actions
        self.planned_transfers = missing
        started: List[Dict[str, Any]] = []
        for index, region in enumerate(missing):
            last = index == len(missing) - 1
            actions.append(Action("transfer image %s to %s" % (name, region),
                                  lambda r=region, last=last: self.transfer(r, started, last)))  # fmt: skip
        return actions

    def describe(self) -> Dict[str, Any]:
        self.result["retries"] = self.client.retries
        if self.params["state"] == "absent":
            return {"removed": [i["id"] for i in self.targets]}
        return {
            "image": view(self.image) if self.image else {},
            "imported": self.will_import,
            "transferred": self.planned_transfers if self.check_mode else self.result["transferred"],
        }

    def fail_error(self, exc: Any) -> Any:
        if getattr(self, "client", None) is not None:
            self.result["retries"] = self.client.retries
        return super().fail_error(exc)

    # -- input ----------------------------------------------------------------------

    def check_url(self) -> None:
        url = (self.params.get("url") or "").strip()
        if not url:
            raise UserInputError(
                "the build has no image named %r yet, and no URL to import one from" % self.params["name"],
                hint="Set 'url' to where DigitalOcean can fetch the image",
                parameter="url",
            )
        try:
            check_import_url(url)
        except ImageRefused as exc:
            raise UserInputError(exc.reason, hint=exc.hint, parameter="url") from None

    def check_src(self, path: str) -> None:
        try:
            facts = inspect_image(path)
        except ImageRefused as exc:
            raise UserInputError("%s: %s" % (path, exc.reason), hint=exc.hint, parameter="src") from None
        self.result["source"] = facts.as_dict()

    def updates(self) -> Dict[str, str]:
        image = self.image or {}
        wanted = {"distribution": self.distribution}
        if self.params.get("description") is not None:
            wanted["description"] = self.params["description"]
        return {k: v for k, v in wanted.items() if (image.get(k) or "") != v}

    # -- actions (the engine's calls, and what they leave in the result) -------------

    def import_image(self) -> None:
        body = {
            "name": self.params["name"],
            "url": self.params["url"].strip(),
            "region": self.params["region"],
            "distribution": self.distribution,
            "description": self.params.get("description") or "",
            "tags": self.tags,
        }
        self.image = self.images.import_image(body)
        self.result.update(imported=True, image=view(self.image))
        if self.params["wait"]:
            # a failed or timed-out wait is undone by the base class (delete_imported)
            self.image = self.wait_available(self.image["id"])

    def delete_imported(self) -> None:
        if self.image and self.image.get("id") is not None:
            self.client.delete_image(self.image["id"])
            self.result["image"] = view(dict(self.image, status="deleted"))

    def update(self, fields: Dict[str, str]) -> None:
        self.image = self.client.update_image((self.image or {})["id"], fields)

    def transfer(self, region: str, started: List[Dict[str, Any]], last: bool) -> None:
        """Start the transfer to ``region`` (or adopt one in progress); after the last one is
        started, wait for all of them, so that they run side by side."""
        image_id = (self.image or {})["id"]
        started.append(self.images.start_transfer(image_id, region))
        self.result["transferred"].append(region)
        if last and self.params["wait"]:
            for item in started:
                self.images.wait_transfer(item)
            self.image = self.client.get_image(image_id) or self.image

    def delete(self, image: Dict[str, Any]) -> None:
        self.images.delete(image["id"], self.params["wait"])

    def wait_available(self, image_id: Any) -> Dict[str, Any]:
        return self.images.wait_available(image_id, lambda image: self.result.update(image=view(image)))


def main() -> None:
    DoCustomImage().execute()


if __name__ == "__main__":
    main()
