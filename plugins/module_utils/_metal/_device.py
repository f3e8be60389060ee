# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: the Metal device and SSH key of one build; no stable interface.
"""The device and project SSH key of one build: input checks, lookups,
creation, waiting and removal. Everything is found by the ``nixforge-build-id`` tag."""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError, UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import TAG_BUILD_ID, BuildIdentity
from ansible_collections.nixforge.images.plugins.module_utils._base._sshkeys import (
    same_key,
    validate_host_key,
    validate_public_key,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._waiter import wait_for
from ansible_collections.nixforge.images.plugins.module_utils._metal._catalogue import Catalogue
from ansible_collections.nixforge.images.plugins.module_utils._metal._client import MetalClient, tag_dict, tag_list
from ansible_collections.nixforge.images.plugins.module_utils._metal._userdata import (
    render_cloud_config,
    render_nixos_userdata,
)

GONE_STATES = ("deprovisioning", "deleted")
Device = Dict[str, Any]


def project_id_of(params: Mapping[str, Any]) -> str:
    project_id = (params.get("project_id") or "").strip()
    if not project_id:
        raise UserInputError(
            "no project given",
            hint="Set 'project_id' (or METAL_PROJECT_ID) to the UUID of your Metal project",
            parameter="project_id",
        )
    if not re.match(r"^[0-9a-fA-F-]{36}$", project_id):
        raise UserInputError(
            "%r is not a project UUID" % project_id,
            hint="Copy the project's UUID from the Metal console or 'metal project get'",
            parameter="project_id",
        )
    return project_id


def check_device_input(params: Mapping[str, Any], build: BuildIdentity) -> Dict[str, Any]:
    """metal_device's checks of ``state=present`` that need no API call (they run first)."""
    public_key = validate_public_key(params.get("public_key"), "public_key")
    host_key = validate_host_key(params.get("host_key_private"), params.get("host_key_public"), required=False)
    bid = params.get("max_price")
    if bid is not None and not params["spot_instance"]:
        raise UserInputError(
            "a spot bid is set but spot_instance is false",
            hint="Set 'spot_instance: true', or drop 'max_price'",
            parameter="max_price",
        )
    if bid is not None and bid <= 0:
        raise UserInputError(
            "%s is not a positive price" % bid,
            hint="Give the highest price per hour in USD, for example 0.5",
            parameter="max_price",
        )
    hostname = params.get("hostname") or "nixforge-%s" % build.build_id
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$", hostname):
        raise UserInputError(
            "%r is not a valid hostname" % hostname, hint="Use letters, digits, dots and hyphens", parameter="hostname"
        )
    build.require_future_expiry()
    return dict(public_key=public_key, host_key=host_key, hostname=hostname)


def address(device: Mapping[str, Any], family: int, public: bool) -> Optional[str]:
    for entry in device.get("ip_addresses") or []:
        if entry.get("address_family") == family and bool(entry.get("public")) == public:
            return entry.get("address")
    return None


def failure_reason(device: Mapping[str, Any]) -> str:
    for event in reversed(device.get("provisioning_events") or []):
        if "fail" in str(event.get("type", "")) or event.get("state") == "failed":
            return str(event.get("body") or event.get("interpolated") or event.get("type"))
    return "no reason given"


class DeviceBuild:
    """The Metal resources of one build in one project."""

    def __init__(
        self,
        client: MetalClient,
        project_id: str,
        build: BuildIdentity,
        params: Mapping[str, Any],
        warn: Callable[[str], None],
    ) -> None:
        self.client = client
        self.project_id = project_id
        self.build = build
        self.params = params
        self.warn = warn
        self.build_tag = "%s=%s" % (TAG_BUILD_ID, build.build_id)

    # -- lookups -----------------------------------------------------------------------

    def check_project(self) -> None:
        """The first call of a run: a bad token or project fails here, naming the parameter."""
        project = self.client.call(
            "projects/%s" % self.project_id, what="Reading the project", parameter="project_id", missing_ok=True
        )
        if project is None:
            raise UserInputError(
                "no project %s is visible with this token" % self.project_id,
                hint="Check 'project_id' (or METAL_PROJECT_ID), and that the token belongs to that project",
                parameter="project_id",
            )

    def devices(self, include_gone: bool = False) -> List[Device]:
        devices = self.client.paginate(
            "projects/%s/devices" % self.project_id, "devices", what="Listing the build's devices", tag=self.build_tag
        )
        # The tag filter is applied by the API; checked again here in case an endpoint ignores it.
        mine = [d for d in devices if self.build_tag in (d.get("tags") or [])]
        if not include_gone:
            mine = [d for d in mine if d.get("state") not in GONE_STATES]
        return sorted(mine, key=lambda d: str(d.get("created_at") or ""))

    def project_keys(self) -> List[Dict[str, Any]]:
        data = self.client.call("projects/%s/ssh-keys" % self.project_id, what="Listing the project's SSH keys")
        return list((data or {}).get("ssh_keys") or [])

    def keys(self) -> List[Dict[str, Any]]:
        """The build's project SSH keys (by label or tag)."""
        label = self.build.ssh_key_name
        return [k for k in self.project_keys() if k.get("label") == label or self.build_tag in (k.get("tags") or [])]

    def get_device(self, device_id: str) -> Optional[Device]:
        return self.client.call("devices/%s" % device_id, what="Reading device %s" % device_id, missing_ok=True)

    def spot_price(self, plan: Any, metro: str) -> Optional[float]:
        data = self.client.call("market/spot/prices/metros", what="Reading spot prices", missing_ok=True)
        entry = (((data or {}).get("spot_market_prices") or {}).get(metro) or {}).get(plan) or {}
        price = entry.get("price")
        return float(price) if price is not None else None

    def choose_key(
        self, public_key: str, device: Optional[Device]
    ) -> Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]]]:
        """``(the key to attach or None to create one, the build's stale keys to delete)``."""
        keys = self.keys()
        matching = [k for k in keys if same_key(k.get("key"), public_key)]
        stale = [k for k in keys if k not in matching]
        if stale and device is not None and not matching:
            raise UserInputError(
                "the build's device was created with another SSH key than 'public_key'",
                hint="Give the key this build started with, or remove the build ('state: absent') and start again",
                parameter="public_key",
            )
        if matching:
            return matching[0], stale
        # Metal refuses a second project key with the same fingerprint: a key somebody added to
        # the project by hand is used as is, and left in place at the end (it is not ours).
        for other in self.project_keys():
            if same_key(other.get("key"), public_key):
                self.warn(
                    "public_key is already the project's SSH key %s (%s); using it and leaving it in place"
                    % (other.get("id"), other.get("label"))
                )
                return other, stale
        return None, stale

    # -- the device's specification ------------------------------------------------------

    def spec(self, checked: Mapping[str, Any]) -> Dict[str, Any]:
        """The device to create, checked against the catalogue (plan, place, OS, KVM, bid)."""
        params = self.params
        catalogue = Catalogue.load(self.client)
        plan = catalogue.plan(params["plan"])
        metro, facility = catalogue.metro_for(params.get("metro"), params.get("facility"))
        catalogue.check_plan_in_metro(plan, metro, "facility" if facility and not params.get("metro") else "metro")
        os_entry = catalogue.operating_system(params["operating_system"], plan)
        kvm = catalogue.has_kvm(plan)
        if params["require_kvm"] and not kvm:
            kvm_plans = [
                s for s, p in catalogue.plans.items() if catalogue.has_kvm(p) and metro in catalogue.plan_metros(p)
            ]
            raise UserInputError(
                "plan %s has no hardware virtualisation (KVM), and require_kvm is true" % plan.get("slug"),
                hint="Pick a plan with KVM%s"
                % (" in %s: %s" % (metro, ", ".join(sorted(kvm_plans))) if kvm_plans else ""),
                parameter="plan",
            )
        on_demand = catalogue.hourly_price(plan, metro, catalogue.metro_ids)
        is_nixos = (os_entry.get("distro") or "").lower() == "nixos" or params["operating_system"].startswith("nixos")
        return dict(
            checked,
            plan=plan,
            metro=metro,
            facility=facility,
            kvm=kvm,
            bid=self.bid(plan, metro, on_demand) if params["spot_instance"] else None,
            on_demand=on_demand,
            userdata=self.userdata(checked, kvm, is_nixos),
            architecture=catalogue.architecture(plan),
        )

    def bid(self, plan: Mapping[str, Any], metro: str, on_demand: Optional[float]) -> float:
        """The spot bid: ``max_price``, else the on-demand price; never below the current spot price."""
        bid = self.params.get("max_price")
        if bid is None:
            if on_demand is None:
                raise UserInputError(
                    "the catalogue has no price for plan %s to bid with" % plan.get("slug"),
                    hint="Set 'max_price'",
                    parameter="max_price",
                )
            bid = on_demand
        current = self.spot_price(plan.get("slug"), metro)
        if current is not None and bid < current:
            raise UserInputError(
                "the bid %.4f is below the current spot price %.4f of %s in %s" % (bid, current, plan["slug"], metro),
                hint="Raise 'max_price' to at least %.4f, or use 'spot_instance: false'" % current,
                parameter="max_price",
            )
        return float(bid)

    def userdata(self, checked: Mapping[str, Any], kvm: bool, is_nixos: bool) -> str:
        params = self.params
        if not is_nixos:
            return render_cloud_config(
                self.build.build_id, checked["host_key"], [checked["public_key"]], params.get("user_data")
            )
        features = params.get("nix_system_features")
        if features is None:
            features = ["big-parallel", "benchmark"] + (["kvm", "nixos-test"] if kvm else [])
        return render_nixos_userdata(
            self.build.build_id,
            params["operating_system"],
            checked["host_key"],
            [checked["public_key"]],
            features,
            params.get("user_data"),
        )

    # -- changes -----------------------------------------------------------------------

    def create_key(self, public_key: str) -> Dict[str, Any]:
        label = self.build.ssh_key_name
        params = {"label": label, "key": public_key, "tags": tag_list(self.build.tags())}

        def find() -> Optional[Dict[str, Any]]:
            found = [k for k in self.keys() if same_key(k.get("key"), public_key)]
            return found[0] if found else None

        path = "projects/%s/ssh-keys" % self.project_id
        return dict(self.client.create_idempotent(path, params, find, "Creating the per-build SSH key", "public_key"))

    def delete_key(self, key_id: str) -> None:
        self.client.call("ssh-keys/%s" % key_id, "DELETE", what="Deleting SSH key %s" % key_id, missing_ok=True)

    def create_device(self, spec: Mapping[str, Any], key: Mapping[str, Any]) -> Device:
        body: Dict[str, Any] = {
            "hostname": spec["hostname"],
            "plan": spec["plan"]["slug"],
            "operating_system": self.params["operating_system"],
            "billing_cycle": "hourly",
            "tags": tag_list(self.build.tags()),
            "userdata": spec["userdata"],
            "project_ssh_keys": [key["id"]] if key.get("id") else [],
            "termination_time": self.build.expires_at_str,
            "locked": False,
            "customdata": {"nixforge": self.build.as_dict()},
        }
        if spec["facility"] and not self.params.get("metro"):
            body["facility"] = spec["facility"]
        else:
            body["metro"] = spec["metro"]
        if spec["bid"] is not None:
            body["spot_instance"] = True
            body["spot_price_max"] = spec["bid"]

        def find() -> Optional[Device]:
            found = [d for d in self.devices() if d.get("state") != "failed"]
            return found[0] if found else None

        path = "projects/%s/devices" % self.project_id
        return dict(self.client.create_idempotent(path, body, find, "Creating the device", "plan"))

    def power_on(self, device_id: str) -> None:
        self.client.call("devices/%s/actions" % device_id, "POST", {"type": "power_on"}, what="Powering the device on")

    def delete_device(self, device: Mapping[str, Any]) -> None:
        if device.get("locked"):
            raise UserInputError(
                "device %s is locked against deletion" % device.get("id"),
                hint="Unlock it in the Metal console (or with 'metal device update --locked=false'), then run again",
                what="Deleting the device",
            )
        self.client.call(
            "devices/%s" % device["id"], "DELETE", what="Deleting device %s" % device["id"], missing_ok=True
        )

    def remove_device(self, device_id: str) -> None:
        """Delete a device this run could not use and wait until it is gone."""
        current = self.get_device(device_id)
        if current is not None and current.get("state") not in GONE_STATES:
            self.delete_device(current)
        self.wait_gone([device_id], min(self.params["wait_timeout"], 600))

    # -- waiting -----------------------------------------------------------------------

    def probe(self, device_id: str) -> Device:
        current = self.get_device(device_id)
        if current is None:
            raise ProviderError(
                "device %s disappeared while provisioning" % device_id,
                hint="Its termination_time may have passed; check 'ttl'/'expires_at'",
                what="Waiting for the device to become active",
            )
        state = current.get("state")
        if state == "failed":
            raise ProviderError(
                "device %s ended in state 'failed' (%s)" % (device_id, failure_reason(current)),
                hint="The provider could not provision it; try again, or another plan or metro",
                what="Provisioning the device",
            )
        if state in GONE_STATES:
            raise ProviderError(
                "device %s is %s" % (device_id, state),
                hint="It was deleted or reached its termination_time; check 'ttl'/'expires_at'",
                what="Waiting for the device to become active",
            )
        return current

    def wait_active(self, device_id: str) -> Device:
        return wait_for(
            lambda: self.probe(device_id),
            timeout=self.params["wait_timeout"],
            what="device %s to become active" % device_id,
            done=lambda d: d.get("state") == "active" and bool(address(d, 4, True)),
            interval=1.0,
            max_interval=10.0,
            describe=lambda d: (
                "state %s%s"
                % (
                    d.get("state"),
                    " (%s%%)" % d.get("provisioning_percentage")
                    if d.get("provisioning_percentage") is not None
                    else "",
                )
            ),
        )

    def wait_gone(self, device_ids: List[str], timeout: float) -> None:
        if not device_ids:
            return
        wait_for(
            lambda: [i for i in device_ids if self.get_device(i) is not None],
            timeout=timeout,
            what="device(s) %s to be gone" % ", ".join(device_ids),
            done=lambda remaining: not remaining,
            interval=1.0,
            max_interval=10.0,
            describe=lambda remaining: "still there: %s" % ", ".join(remaining),
        )

    # -- describing --------------------------------------------------------------------

    def describe(self, device: Mapping[str, Any], spec: Mapping[str, Any], key: Mapping[str, Any]) -> Dict[str, Any]:
        plan = device.get("plan") or spec["plan"]
        spot = bool(device.get("spot_instance"))
        bid = device.get("spot_price_max") if spot else None
        keys = ("address", "address_family", "public", "cidr", "gateway")
        return {
            "id": device.get("id"),
            "hostname": device.get("hostname"),
            "state": device.get("state"),
            "plan": plan.get("slug") if isinstance(plan, dict) else plan,
            "metro": (device.get("metro") or {}).get("code") or spec["metro"],
            "facility": (device.get("facility") or {}).get("code") or spec["facility"],
            "operating_system": (device.get("operating_system") or {}).get("slug") or self.params["operating_system"],
            "architecture": spec["architecture"],
            "kvm": spec["kvm"],
            "public_ipv4": address(device, 4, True),
            "private_ipv4": address(device, 4, False),
            "public_ipv6": address(device, 6, True),
            "ip_addresses": [{k: a.get(k) for k in keys} for a in device.get("ip_addresses") or []],
            "ssh_user": "root",
            "ssh_key_id": key.get("id"),
            "host_public_key": spec["host_key"].public if spec.get("host_key") else None,
            "spot_instance": spot,
            "spot_price_max": bid,
            "price_per_hour": bid if bid is not None else spec["on_demand"],
            "termination_time": device.get("termination_time"),
            "created_at": device.get("created_at"),
            "tags": tag_dict(device.get("tags")),
        }
