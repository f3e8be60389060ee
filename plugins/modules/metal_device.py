#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: metal_device
short_description: Equinix Metal (Packet) device as a per-build Nix builder
version_added: 0.1.0
description:
  - Creates, adopts or removes the Equinix Metal device of one build, together with a per-build project SSH key.
    Everything is tagged with the build id; a second run with the same O(build_id) adopts the device instead of
    creating another, and O(state=absent) removes the device and its key and waits until they are gone.
  - B(Equinix Metal was sunset on 2026-06-30.) This module keeps working against Metal-compatible endpoints
    (O(api_url)) for users who have one; new users should pick the C(ec2) or C(ssh) provider of the
    C(nixforge.images.builder_host) role instead.
  - Before anything is created the plan, the metro (or facility), the operating system, the spot bid and the KVM
    requirement are checked against the provider's catalogue; errors name the parameter and list valid values.
  - The device ends itself at the build's expiry through Metal's C(termination_time), even if the controller
    is gone. (A scheduled poweroff would not help on Metal, where a powered-off device is still billed.)
  - The builder's SSH host key is generated on the controller and injected through the user data, so that the
    controller can pin it. For Debian and Ubuntu the user data is C(#cloud-config); for NixOS it is a NixOS
    module (Nix expression) that also makes the device a Nix remote builder (trusted user, system features).
  - When the device ends in state C(failed), or the wait times out, the device and the SSH key created for it
    are deleted before the module fails.
author:
  - nixforge.images contributors (@nixforge)
extends_documentation_fragment:
  - nixforge.images.common
  - nixforge.images.common.wait
  - nixforge.images.common.builder
  - nixforge.images.metal
  - nixforge.images.attributes
  - nixforge.images.attributes.cloud
  - nixforge.images.attributes.diff_none
  - nixforge.images.attributes.actiongroup_metal
options:
  state:
    description:
      - V(present) creates the device of the build (or adopts the one that exists) and waits until it is
        C(active); V(absent) deletes every device and SSH key of the build and waits until they are gone.
    type: str
    choices: [present, absent]
    default: present
  plan:
    description:
      - Plan (machine type) slug, for example V(c3.small.x86), V(m3.large.x86) or V(c3.large.arm64).
      - Required with O(state=present), and so is O(public_key).
    type: str
  metro:
    description:
      - Metro code where the device runs, for example V(da), V(sv), V(ny) or V(am).
      - One of O(metro) and O(facility) is required with O(state=present).
    type: str
  facility:
    description:
      - Facility code (Metal's older, deprecated way to place a device), for example V(da11). The metro is taken
        from the facility. If O(metro) is also given they must agree.
    type: str
  operating_system:
    description:
      - Operating system slug, for example V(debian_12) or V(nixos_23_11).
      - For NixOS slugs (C(nixos_*)) the user data is a NixOS module; for the others it is C(#cloud-config).
    type: str
    default: debian_12
  hostname:
    description:
      - Hostname of the device. Default C(nixforge-<build_id>).
    type: str
  user_data:
    description:
      - Your own part of the user data, merged with what the module needs (host key, SSH keys).
      - For Debian/Ubuntu, a C(#cloud-config) document merged into the module's own (lists such as C(runcmd) are
        appended; the SSH host key settings cannot be overridden). Shell scripts are not accepted; put commands
        under C(runcmd).
      - "For NixOS, a NixOS module (a Nix expression such as C({ pkgs, ... }: { environment.systemPackages =
        [ pkgs.git ]; })); it is imported by the module's own configuration."
      - Never returned by the module (the user data carries the host's private key).
    type: str
  spot_instance:
    description:
      - Bid for a spot market device (cheaper, can be reclaimed).
    type: bool
    default: false
  max_price:
    description:
      - Highest price per hour (USD) to pay for a spot device. Only with O(spot_instance=true).
      - Default is the plan's on-demand price in the metro. A bid below the current spot price fails before
        anything is created.
    type: float
  require_kvm:
    description:
      - Fail (before creating anything) when the plan has no hardware virtualisation (C(/dev/kvm)), for example
        for images built with C(make-disk-image) such as the DigitalOcean image.
      - Every Equinix Metal plan was bare metal with virtualisation; a Metal-compatible endpoint can say
        otherwise with C(specs.features.kvm=false) in its plan catalogue.
    type: bool
    default: false
  wait_timeout:
    description:
      - How many seconds to wait for the device to become C(active) (or, with O(state=absent), to be gone)
        when O(wait=true). When the time runs out the module deletes what it created and fails with the state it
        last observed.
      - Metal usually provisioned bare metal in 2 to 10 minutes, NixOS and spot devices sometimes longer.
    type: int
    default: 900
  device_ids:
    description:
      - With O(state=absent), ids of devices the caller knows the build had (for example from the record
        provisioning wrote). One the provider already removed (a spot market reclaim, its C(termination_time))
        is then still reported in RV(ended), although the API no longer lists it.
    type: list
    elements: str
    default: []
    version_added: 0.2.0
  nix_system_features:
    description:
      - Nix system features the NixOS builder announces (only for NixOS operating systems).
      - Default V(big-parallel) and V(benchmark), plus V(kvm) and V(nixos-test) when the plan has KVM.
    type: list
    elements: str
seealso:
  - module: nixforge.images.ec2_spot_host
  - name: Equinix Metal API (historical reference)
    description: The Metal API v1 this module speaks.
    link: https://deploy.equinix.com/developers/api/metal/
"""

EXAMPLES = r"""
- name: A KVM-capable x86_64 builder for the build, on the spot market, ends at the build's expiry
  nixforge.images.metal_device:
    build_id: do-image-42
    ttl: 2h
    api_url: metal.example.com/metal/v1
    project_id: "{{ metal_project_id }}"
    plan: c3.small.x86
    metro: da
    operating_system: debian_12
    spot_instance: true
    max_price: 0.5
    require_kvm: true
    public_key: "{{ lookup('ansible.builtin.file', state_dir ~ '/id_ed25519.pub') }}"
    host_key_private: "{{ lookup('ansible.builtin.file', state_dir ~ '/ssh_host_ed25519_key') }}"
    host_key_public: "{{ lookup('ansible.builtin.file', state_dir ~ '/ssh_host_ed25519_key.pub') }}"
  register: builder

- name: Connect to it with the pinned host key
  ansible.builtin.copy:
    dest: "{{ state_dir }}/known_hosts"
    content: "{{ builder.device.public_ipv4 }} {{ builder.device.host_public_key }}\n"
    mode: "0600"

- name: A NixOS remote builder, configured through user data at creation (like the original Packet setup)
  nixforge.images.metal_device:
    build_id: do-image-43
    project_id: "{{ metal_project_id }}"
    plan: m3.large.x86
    metro: sv
    operating_system: nixos_23_11
    user_data: |
      { pkgs, ... }: { environment.systemPackages = [ pkgs.git ]; }
    public_key: "{{ lookup('ansible.builtin.file', state_dir ~ '/id_ed25519.pub') }}"
    host_key_private: "{{ lookup('ansible.builtin.file', state_dir ~ '/ssh_host_ed25519_key') }}"
    host_key_public: "{{ lookup('ansible.builtin.file', state_dir ~ '/ssh_host_ed25519_key.pub') }}"

- name: Remove the build's device and SSH key, wait until they are gone
  nixforge.images.metal_device:
    build_id: do-image-42
    project_id: "{{ metal_project_id }}"
    state: absent

- name: Remove the build's device, and say whether the provider had already ended it
  nixforge.images.metal_device:
    build_id: do-image-42
    project_id: "{{ metal_project_id }}"
    state: absent
    device_ids: ["{{ builder.device.id }}"]
  register: gone

- name: Report a reclaimed builder
  ansible.builtin.debug:
    msg: "{{ item.code }} on {{ item.device_id }}: {{ item.message }}"
  loop: "{{ gone.ended }}"

- name: Set the endpoint and the project once for every Metal task
  module_defaults:
    group/nixforge.images.metal:
      api_url: metal.example.com/metal/v1
      project_id: "{{ metal_project_id }}"
  block:
    - name: Builder for this run
      nixforge.images.metal_device:
        build_id: sd-aarch64-7
        plan: c3.large.arm64
        metro: da
        public_key: "{{ my_build_public_key }}"
"""

RETURN = r"""
changed:
  description: Whether a device or SSH key was created or deleted (or would be, in check mode).
  returned: always
  type: bool
actions:
  description: What was done (or would be done in check mode), one line each.
  returned: when something changed
  type: list
  elements: str
  sample: ["create project SSH key nixforge-do-image-42-ssh", "create device nixforge-do-image-42 (c3.small.x86 in da)"]
adopted:
  description: Whether the device already existed for this build id and was adopted.
  returned: when O(state=present)
  type: bool
device:
  description:
    - The build's device. Empty in check mode when it would be created.
  returned: when O(state=present)
  type: dict
  contains:
    id:
      description: Device UUID.
      type: str
      sample: 6a8b1f0e-93f4-4ef1-9a63-3e3f2e0e1c55
    hostname:
      description: Hostname.
      type: str
      sample: nixforge-do-image-42
    state:
      description: Metal state of the device (C(active) once the module returns after waiting).
      type: str
      sample: active
    plan:
      description: Plan slug.
      type: str
      sample: c3.small.x86
    metro:
      description: Metro code.
      type: str
      sample: da
    facility:
      description: Facility code.
      type: str
      sample: da11
    operating_system:
      description: Operating system slug.
      type: str
      sample: debian_12
    architecture:
      description: CPU architecture of the plan, as Nix names it (V(x86_64) or V(aarch64)).
      type: str
      sample: x86_64
    kvm:
      description: Whether the plan has hardware virtualisation (C(/dev/kvm)).
      type: bool
    public_ipv4:
      description: Public IPv4 address (the one to SSH to).
      type: str
      sample: 203.0.113.10
    private_ipv4:
      description: Private IPv4 address, if any.
      type: str
    public_ipv6:
      description: Public IPv6 address, if any.
      type: str
    ip_addresses:
      description: Every address of the device.
      type: list
      elements: dict
      sample: [{"address": "203.0.113.10", "address_family": 4, "public": true, "cidr": 31, "gateway": "203.0.113.9"}]
    ssh_user:
      description: User to log in as.
      type: str
      sample: root
    ssh_key_id:
      description: UUID of the per-build project SSH key.
      type: str
    host_public_key:
      description: The pinned SSH host public key (O(host_key_public)).
      type: str
      sample: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... nixforge-do-image-42-host
    spot_instance:
      description: Whether the device is a spot market device.
      type: bool
    spot_price_max:
      description: The spot bid (USD per hour), for spot devices.
      type: float
    price_per_hour:
      description: Upper bound of the hourly price (the spot bid, or the plan's on-demand price).
      type: float
      sample: 0.75
    termination_time:
      description: When Metal terminates the device (the build's expiry), UTC.
      type: str
      sample: "2026-11-22T18:00:00Z"
    created_at:
      description: Creation time, UTC.
      type: str
    tags:
      description: The device's tags as a dictionary (Metal stores them as C(key=value) strings).
      type: dict
      sample: {"nixforge-build-id": "do-image-42", "nixforge-pipeline": "default"}
ssh_host:
  description: Address to connect to (RV(device.public_ipv4)); the same name as in M(nixforge.images.ec2_spot_host).
  returned: when O(state=present) and not in check mode
  type: str
ssh_port:
  description: SSH port.
  returned: when O(state=present)
  type: int
  sample: 22
ssh_user:
  description: User to log in as.
  returned: when O(state=present)
  type: str
  sample: root
host_public_key:
  description: The pinned SSH host public key (O(host_key_public)).
  returned: when O(state=present)
  type: str
lifecycle:
  description: V(spot) or V(on-demand).
  returned: when O(state=present) and not in check mode
  type: str
max_price:
  description: Upper bound of the hourly price in USD (RV(device.price_per_hour)).
  returned: when O(state=present) and not in check mode
  type: float
removed:
  description: What O(state=absent) deleted (or would delete in check mode).
  returned: when O(state=absent)
  type: dict
  contains:
    devices:
      description: Device UUIDs.
      type: list
      elements: str
    ssh_keys:
      description: SSH key UUIDs.
      type: list
      elements: str
ended:
  description:
    - Devices of the build that the provider ended before this task deleted them (reclaimed by the spot market,
      or at their C(termination_time)), with the event that says so. Found among the devices still listed and
      among O(device_ids) that the API no longer lists, through the project's events.
  returned: when O(state=absent)
  type: list
  elements: dict
  version_added: 0.2.0
  sample: [{device_id: 6f1f0c0e-8a43-4a52-9d4b-2f0e8c1b7a11, code: termination.spot_market,
            message: "Device reclaimed: the spot market price exceeded the bid"}]
build:
  description: The build identity the resources carry.
  returned: always
  type: dict
  sample: {"build_id": "do-image-42", "pipeline": "default", "expires_at": "2026-11-22T18:00:00Z"}
"""

from functools import partial
from typing import Any, Dict, List, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import NixforgeError, ProviderError
from ansible_collections.nixforge.images.plugins.module_utils._base._module import Action, NixforgeModule
from ansible_collections.nixforge.images.plugins.module_utils._metal._client import (
    REQUIRED_LIBRARIES,
    metal_argument_spec,
    metal_client,
)
from ansible_collections.nixforge.images.plugins.module_utils._metal._device import (
    GONE_STATES,
    Device,
    DeviceBuild,
    check_device_input,
    project_id_of,
)
from ansible_collections.nixforge.images.plugins.module_utils._metal._discovery import ended_devices


class MetalDevice(NixforgeModule):
    argument_spec = dict(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        plan=dict(type="str"),
        metro=dict(type="str"),
        facility=dict(type="str"),
        operating_system=dict(type="str", default="debian_12"),
        hostname=dict(type="str"),
        user_data=dict(type="str"),
        public_key=dict(type="str", no_log=False),
        host_key_private=dict(type="str", no_log=True),
        host_key_public=dict(type="str", no_log=False),
        spot_instance=dict(type="bool", default=False),
        max_price=dict(type="float"),
        require_kvm=dict(type="bool", default=False),
        nix_system_features=dict(type="list", elements="str"),
        device_ids=dict(type="list", elements="str", default=[]),
    )
    module_kwargs = dict(required_if=[["state", "present", ["plan", "public_key"]]])
    provider_argument_spec = metal_argument_spec()
    default_wait_timeout = 900
    required_libraries = REQUIRED_LIBRARIES

    device: Optional[Device] = None
    key: Optional[Dict[str, Any]] = None
    error: Optional[NixforgeError] = None

    # -- prepare: check the input, look up what exists -------------------------------------

    def prepare(self) -> None:
        self.result["build"] = self.identity.as_dict()
        client = metal_client(self.params)
        self.engine = DeviceBuild(client, project_id_of(self.params), self.identity, self.params, self.warn)
        if self.params["state"] == "absent":
            self.engine.check_project()
            self.devices = self.engine.devices(include_gone=True)
            self.keys = self.engine.keys()
            # before any delete of ours, so that only the provider's ends are reported
            self.result["ended"] = ended_devices(
                client, project_id_of(self.params), self.devices, self.params["device_ids"]
            )
            return
        checked = check_device_input(self.params, self.identity)
        # The project and the catalogue are the first calls: a bad token fails here.
        self.engine.check_project()
        self.spec = self.engine.spec(checked)
        devices = self.engine.devices()
        self.failed = [d for d in devices if d.get("state") == "failed"]  # never usable: replaced
        live = [d for d in devices if d.get("state") != "failed"]
        if len(live) > 1:
            raise ProviderError(
                "the build has %d devices (%s); it should have one"
                % (len(live), ", ".join(str(d.get("id")) for d in live)),
                hint="Run with 'state: absent' for this build id to remove them, then again with 'state: present'",
                what="Adopting the build's device",
            )
        self.device = live[0] if live else None
        self.result["adopted"] = self.device is not None
        self.key, self.stale = self.engine.choose_key(self.spec["public_key"], self.device)
        if self.device is not None and self.device.get("state") != "inactive" and not self.check_mode:
            self.wait_adopted()  # an inactive one is powered on, and waited for, by its action

    # -- plan: the same texts in check mode and in a real run ------------------------------

    def plan(self) -> List[Action]:
        engine = self.engine
        if self.params["state"] == "absent":
            self.result["removed"] = {
                "devices": [d["id"] for d in self.devices],
                "ssh_keys": [k["id"] for k in self.keys],
            }
            return self.plan_absent()
        actions = [
            Action("delete failed device %s" % d.get("id"), partial(engine.delete_device, d)) for d in self.failed
        ]
        actions += [
            Action("delete stale project SSH key %s" % k.get("id"), partial(engine.delete_key, k["id"]))
            for k in self.stale
        ]
        if self.key is None:
            actions.append(
                Action("create project SSH key %s" % self.identity.ssh_key_name, self.create_key, self.delete_key)
            )
        spec = self.spec
        if self.device is None:
            text = "create device %s (%s in %s, %s%s)" % (
                spec["hostname"],
                spec["plan"]["slug"],
                spec["facility"] or spec["metro"],
                self.params["operating_system"],
                ", spot bid %.4f" % spec["bid"] if spec["bid"] is not None else "",
            )
            actions.append(Action(text, self.create_device, undo=self.remove_created))
        elif self.device.get("state") == "inactive":
            actions.append(Action("power on device %s" % self.device["id"], self.power_on))
        return actions

    def plan_absent(self) -> List[Action]:
        """Delete the build's devices and keys; the last action waits until the devices are
        gone (the deletions run side by side), so that describe() only reports."""
        engine = self.engine
        live = [d for d in self.devices if d.get("state") not in GONE_STATES]  # others are already going
        actions = [Action("delete device %s" % d["id"], partial(engine.delete_device, d)) for d in live] + [
            Action("delete project SSH key %s" % k["id"], partial(engine.delete_key, k["id"])) for k in self.keys
        ]
        if not (self.devices and self.params["wait"]) or self.check_mode:
            return actions
        if not actions:  # only devices already going: nothing to change, but the wait was asked for
            self.wait_gone()
            return actions
        last = actions[-1]

        def last_then_wait() -> None:
            last.do()
            self.wait_gone()

        actions[-1] = Action(last.text, last_then_wait, last.undo)
        return actions

    def wait_gone(self) -> None:
        self.engine.wait_gone([d["id"] for d in self.devices], self.params["wait_timeout"])

    # -- the actions -------------------------------------------------------------------------

    def create_key(self) -> None:
        self.key = self.engine.create_key(self.spec["public_key"])

    def delete_key(self) -> None:
        if self.key and self.key.get("id"):
            self.engine.delete_key(self.key["id"])

    def create_device(self) -> None:
        """Create the device and wait until it is active; if it never gets there, the base
        class's rollback runs ``remove_created`` (this action's undo)."""
        self.device = self.engine.create_device(self.spec, self.key or {})
        self.wait_active()

    def power_on(self) -> None:
        self.engine.power_on((self.device or {})["id"])  # planned only for an adopted device
        self.wait_active()

    def wait_active(self) -> None:
        if not self.params["wait"] or self.device is None:
            return
        try:
            self.device = self.engine.wait_active(self.device["id"])
        except NixforgeError as exc:
            self.error = exc  # the undo says in it what was cleaned up
            raise

    def wait_adopted(self) -> None:
        """An adopted device that does not become active is removed with the build's keys,
        as the run that created it would have done."""
        try:
            self.wait_active()
        except NixforgeError:
            self.remove_created()
            raise

    def remove_created(self) -> None:
        """Undo of the device's creation: delete the device and every key of the build, and
        say so in the error being reported (or that cleaning up failed, and what to run)."""
        if self.device is None:
            return
        device_id = self.device["id"]
        cleaned = ["device %s" % device_id]
        self.result["changed"] = True
        try:
            self.engine.remove_device(device_id)
            for key in self.engine.keys():
                self.engine.delete_key(key["id"])
                cleaned.append("SSH key %s" % key["id"])
        except NixforgeError as cleanup_error:
            if self.error is not None:
                self.error.add_hint("Cleaning up failed too: %s" % cleanup_error.format())
                self.error.add_hint("Run this task again with 'state: absent' for build %s" % self.identity.build_id)
            raise
        if self.error is not None:
            self.error.add_hint("Deleted what the build had created (%s); nothing is left behind" % ", ".join(cleaned))

    # -- describe ----------------------------------------------------------------------------

    def describe(self) -> Dict[str, Any]:
        if self.params["state"] == "absent":
            return {}
        if self.device is None:  # check mode, would be created
            return {"device": {}, "ssh_port": 22, "ssh_user": "root", "host_public_key": self.host_public_key}
        device = self.engine.describe(self.device, self.spec, self.key or {})
        return {
            "device": device,
            "ssh_host": device["public_ipv4"],
            "ssh_port": 22,
            "ssh_user": device["ssh_user"],
            "host_public_key": device["host_public_key"],
            "lifecycle": "spot" if device["spot_instance"] else "on-demand",
            "max_price": device["price_per_hour"],
        }

    @property
    def host_public_key(self) -> Optional[str]:
        return self.spec["host_key"].public if self.spec.get("host_key") else None


def main() -> None:
    MetalDevice().execute()


if __name__ == "__main__":
    main()
