# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: the DigitalOcean custom image engine; no stable interface.
"""A build's custom images: lookup, import from a URL, transfers to more regions, removal,
and the waits for each (DigitalOcean's states: ``NEW``/``pending`` -> ``available``, or the
image vanishes or turns ``deleted`` with an ``error_message``).

    images = ImageEngine(client, build_id, name, wait_timeout=1800, poll_interval=5.0)
    found = images.build_images(present_only=True)
    image = images.import_image(body)            # adopts an image whose POST answer was lost
    image = images.wait_available(image["id"], on_progress=lambda i: ...)

Every wait of one engine shares one deadline (``wait_timeout`` from its creation), so a run
that imports and then transfers never waits longer than the user asked in total.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlsplit

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import TAG_BUILD_ID
from ansible_collections.nixforge.images.plugins.module_utils._base._waiter import wait_for

IMAGE_FIELDS = ("id", "name", "status", "regions", "size_gigabytes", "min_disk_size", "distribution",
                "description", "tags", "created_at", "error_message")  # fmt: skip
CREATE_PARAMETERS = ("tags", "region", "url", "distribution", "description", "name")
FORMATS_HINT = (
    "DigitalOcean imports raw, qcow2, VHDX, VDI or VMDK images (optionally gzip or bzip2) from a URL it can "
    "fetch without credentials; check 'url' and the file"
)


def adoptable(image: Dict[str, Any]) -> bool:
    """An image that is, or may still become, available (DigitalOcean's NEW/pending/available)."""
    if str(image.get("error_message") or "").strip():
        return False
    return image.get("status") in ("NEW", "pending", "available")


def display_url(url: str) -> str:
    """Only scheme and host: the rest of an image URL can grant download."""
    parts = urlsplit(url)
    return "%s://%s/..." % (parts.scheme, parts.hostname or "")


def view(image: Dict[str, Any]) -> Dict[str, Any]:
    """The fields of an image a module returns."""
    return {k: image.get(k) for k in IMAGE_FIELDS}


class ImageEngine:
    """The custom images of one build (found by its ``nixforge-build-id:<id>`` tag)."""

    def __init__(
        self, client: Any, build_id: str, name: Optional[str], wait_timeout: int, poll_interval: float
    ) -> None:
        self.client = client
        self.name = name
        self.tag = "%s:%s" % (TAG_BUILD_ID, build_id)
        self.wait_timeout = wait_timeout
        self.interval = max(0.1, float(poll_interval))
        self.deadline = time.monotonic() + max(0, wait_timeout)

    # -- lookups ----------------------------------------------------------------------

    def build_images(self, present_only: bool) -> List[Dict[str, Any]]:
        """The build's images (of ``name``, when given), available ones first, then oldest.
        With ``present_only`` only images that can still become or are available: a failed
        import (``deleted`` with an error_message) or a deleted image is never adopted."""
        name = self.name
        images = [i for i in self.client.list_images(tag=self.tag) if not name or i.get("name") == name]
        if present_only:
            images = [i for i in images if adoptable(i)]
        return sorted(images, key=lambda i: (i.get("status") != "available", str(i.get("created_at")), i["id"]))

    def find_created(self) -> Optional[Dict[str, Any]]:
        found = self.build_images(present_only=True)
        return found[0] if found else None

    def pending_transfer(self, image_id: Any, region: str, done_ok: bool = False) -> Optional[Dict[str, Any]]:
        """A transfer to ``region`` still running (or, with ``done_ok``, already done)."""
        for action in self.client.image_actions(image_id):
            if action.get("type") != "transfer" or action.get("region_slug") != region:
                continue
            if action.get("status") == "in-progress" or (done_ok and action.get("status") == "completed"):
                return action
        return None

    # -- changes ----------------------------------------------------------------------

    def import_image(self, body: Dict[str, Any]) -> Dict[str, Any]:
        """POST the import; a lost answer is resolved by finding the build's image."""
        image = self.client.create("images", body, self.find_created, "Importing image %s" % body["name"],
                                   CREATE_PARAMETERS)  # fmt: skip
        return image["image"] if "image" in image else image  # the POST's answer, or the image found

    def start_transfer(self, image_id: Any, region: str) -> Dict[str, Any]:
        """Start the transfer to ``region``, or adopt one in progress."""
        action = self.pending_transfer(image_id, region)
        if action is None:
            action = self.client.create(
                "images/%s/actions" % image_id,
                {"type": "transfer", "region": region},
                lambda: self.pending_transfer(image_id, region, done_ok=True),
                "Transferring image %s to %s" % (self.name, region),
                ["regions"],
            )
            action = action.get("action", action)
        return dict(action, region_slug=region)

    def delete(self, image_id: Any, wait: bool) -> None:
        self.client.delete_image(image_id)
        if wait:
            self.wait(
                lambda: self.client.get_image(image_id),
                "image %s to be gone" % image_id,
                lambda i: i is None or i.get("status") == "deleted",
                lambda i: "status %s" % i.get("status"),
            )

    # -- waits ------------------------------------------------------------------------

    def wait(self, probe: Callable[[], Any], what: str, done: Callable[[Any], bool], describe: Any) -> Any:
        """One deadline for the whole run: each wait gets what is left of ``wait_timeout``."""
        return wait_for(
            probe,
            timeout=max(0.0, self.deadline - time.monotonic()),
            what=what,
            done=done,
            interval=self.interval,
            max_interval=self.interval,
            backoff=1.0,
            option_value=self.wait_timeout,
            describe=describe,
        )

    def wait_available(self, image_id: Any, on_progress: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
        """Wait for the import to end; ``on_progress`` sees each state (the module's result
        keeps the last one, so a timeout still reports where the image got)."""
        name = self.name

        def probe() -> Dict[str, Any]:
            image = self.client.get_image(image_id)
            if image is None:
                raise ProviderError(
                    "DigitalOcean removed image %s (%s) while importing it, without a reason" % (image_id, name),
                    hint=FORMATS_HINT,
                    what="Importing image %s" % name,
                )
            on_progress(image)
            if image.get("status") == "deleted" or (image.get("error_message") and image.get("status") != "available"):
                raise ProviderError(
                    "DigitalOcean refused image %s: %s" % (image_id, image.get("error_message") or "no reason given"),
                    hint=FORMATS_HINT,
                    what="Importing image %s" % name,
                    code="import_failed",
                )
            return image

        return self.wait(
            probe,
            "image %s (%s) to become available" % (name, image_id),
            lambda i: i.get("status") == "available",
            lambda i: "status %s" % i.get("status"),
        )

    def wait_transfer(self, action: Dict[str, Any]) -> None:
        region = action["region_slug"]

        def probe() -> Dict[str, Any]:
            current = self.client.get_action(action["id"]) or {"status": "errored"}
            if current.get("status") == "errored":
                raise ProviderError(
                    "DigitalOcean's transfer action %s to %s errored" % (action["id"], region),
                    hint="Try again; if it keeps failing, pick another region in 'regions'",
                    what="Transferring image %s" % self.name,
                )
            return current

        self.wait(
            probe,
            "the transfer of image %s to %s" % (self.name, region),
            lambda a: a.get("status") == "completed",
            lambda a: "action %s %s" % (action["id"], a.get("status")),
        )
