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
  - nixforge.images.metal
  - nixforge.images.attributes
  - nixforge.images.attributes.cloud
  - nixforge.images.attributes.diff_none
attributes:
  action_group:
    description: Use C(group/nixforge.images.metal) or C(group/nixforge.images.all) in C(module_defaults) to set
      defaults (API URL, token, project) for this module.
    support: full
    membership:
      - nixforge.images.metal
      - nixforge.images.all
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
      - Required with O(state=present).
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
  userdata:
    description:
      - Your own part of the user data, merged with what the module needs (host key, SSH keys).
      - For Debian/Ubuntu, a C(#cloud-config) document; its keys are merged (the host key always comes from
        O(host_key_private)). Shell scripts are not accepted; put commands under C(runcmd).
      - "For NixOS, a NixOS module (a Nix expression such as C({ pkgs, ... }: { environment.systemPackages =
        [ pkgs.git ]; })); it is imported by the module's own configuration."
      - Never returned by the module (the user data carries the host's private key).
    type: str
  ssh_public_key:
    description:
      - The per-build OpenSSH public key allowed to log in as C(root). A project SSH key labelled
        C(nixforge-<build_id>-ssh) is created from it, attached to the device only, and removed with it.
      - Required with O(state=present).
    type: str
  host_key_private:
    description:
      - The device's SSH host private key (OpenSSH format), generated on the controller so that the controller can
        pin the host key. Injected through the user data. Never logged or returned.
      - Give it together with O(host_key_public).
    type: str
  host_key_public:
    description:
      - The public half of O(host_key_private) (C(ssh-ed25519 AAAA...)). Returned as RV(device.host_public_key).
    type: str
  spot_instance:
    description:
      - Bid for a spot market device (cheaper, can be reclaimed).
    type: bool
    default: false
  spot_price_max:
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
    spot_price_max: 0.5
    require_kvm: true
    ssh_public_key: "{{ lookup('ansible.builtin.file', state_dir ~ '/id_ed25519.pub') }}"
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
    userdata: |
      { pkgs, ... }: { environment.systemPackages = [ pkgs.git ]; }
    ssh_public_key: "{{ lookup('ansible.builtin.file', state_dir ~ '/id_ed25519.pub') }}"
    host_key_private: "{{ lookup('ansible.builtin.file', state_dir ~ '/ssh_host_ed25519_key') }}"
    host_key_public: "{{ lookup('ansible.builtin.file', state_dir ~ '/ssh_host_ed25519_key.pub') }}"

- name: Remove the build's device and SSH key, wait until they are gone
  nixforge.images.metal_device:
    build_id: do-image-42
    project_id: "{{ metal_project_id }}"
    state: absent

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
        ssh_public_key: "{{ my_build_public_key }}"
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
build:
  description: The build identity the resources carry.
  returned: always
  type: dict
  sample: {"build_id": "do-image-42", "pipeline": "default", "expires_at": "2026-11-22T18:00:00Z"}
"""

import re
from typing import Any, Dict, List, Optional

from ansible_collections.nixforge.images.plugins.module_utils.common import (
    TAG_BUILD_ID,
    BuildIdentity,
    NixforgeModule,
)
from ansible_collections.nixforge.images.plugins.module_utils.errors import (
    NixforgeError,
    ProviderError,
    UserInputError,
)
from ansible_collections.nixforge.images.plugins.module_utils.metal import (
    REQUIRED_LIBRARIES,
    Catalogue,
    MetalClient,
    check_host_key_pair,
    metal_argument_spec,
    metal_client,
    render_cloud_config,
    render_nixos_userdata,
    tag_dict,
    tag_list,
)
from ansible_collections.nixforge.images.plugins.module_utils.waiter import wait_for

GONE_STATES = ("deprovisioning", "deleted")
PUBLIC_KEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/=]+"
)


class MetalDevice(NixforgeModule):
    argument_spec = dict(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        plan=dict(type="str"),
        metro=dict(type="str"),
        facility=dict(type="str"),
        operating_system=dict(type="str", default="debian_12"),
        hostname=dict(type="str"),
        userdata=dict(type="str"),
        ssh_public_key=dict(type="str", no_log=False),
        host_key_private=dict(type="str", no_log=True),
        host_key_public=dict(type="str", no_log=False),
        spot_instance=dict(type="bool", default=False),
        spot_price_max=dict(type="float"),
        require_kvm=dict(type="bool", default=False),
        nix_system_features=dict(type="list", elements="str"),
    )
    module_kwargs = dict(required_if=[["state", "present", ["plan", "ssh_public_key"]]])
    provider_argument_spec = metal_argument_spec()
    default_wait_timeout = 900
    required_libraries = REQUIRED_LIBRARIES

    client: MetalClient
    project_id: str

    @property
    def ident(self) -> BuildIdentity:
        if self.build is None:  # the base class sets it whenever build_id is given (it is required)
            raise UserInputError("no build id given", hint="Set 'build_id'", parameter="build_id")
        return self.build

    # -- entry -----------------------------------------------------------------------

    def run(self) -> None:
        self.result["build"] = self.ident.as_dict()
        self.client = metal_client(self.params)
        self.project_id = self._project_id()
        if self.params["state"] == "absent":
            self.absent()
        else:
            self.present()

    def _project_id(self) -> str:
        project_id = (self.params.get("project_id") or "").strip()
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

    # -- lookups ---------------------------------------------------------------------

    @property
    def build_tag(self) -> str:
        return "%s=%s" % (TAG_BUILD_ID, self.ident.build_id)

    @property
    def key_label(self) -> str:
        return self.ident.resource_name("ssh")

    def build_devices(self, include_gone: bool = False) -> List[Dict[str, Any]]:
        devices = self.client.paginate(
            "projects/%s/devices" % self.project_id,
            "devices",
            what="Listing the build's devices",
            tag=self.build_tag,
        )
        # The tag filter is applied by the API; checked again here in case an endpoint ignores it.
        mine = [d for d in devices if self.build_tag in (d.get("tags") or [])]
        if not include_gone:
            mine = [d for d in mine if d.get("state") not in GONE_STATES]
        return sorted(mine, key=lambda d: str(d.get("created_at") or ""))

    def build_keys(self) -> List[Dict[str, Any]]:
        data = self.client.call("projects/%s/ssh-keys" % self.project_id, what="Listing the build's SSH keys") or {}
        return [
            k
            for k in data.get("ssh_keys") or []
            if k.get("label") == self.key_label or self.build_tag in (k.get("tags") or [])
        ]

    def get_device(self, device_id: str) -> Optional[Dict[str, Any]]:
        return self.client.call("devices/%s" % device_id, what="Reading device %s" % device_id, missing_ok=True)

    # -- present ---------------------------------------------------------------------

    def validate(self) -> Dict[str, Any]:
        """Every check that can fail on the input, before anything is created."""
        params = self.params
        public_key = (params.get("ssh_public_key") or "").strip()
        if not PUBLIC_KEY_RE.match(public_key):
            raise UserInputError(
                "not an OpenSSH public key",
                hint="Give the content of the per-build key's .pub file (for example 'ssh-ed25519 AAAA...')",
                parameter="ssh_public_key",
            )
        check_host_key_pair(params.get("host_key_private"), params.get("host_key_public"))
        if params.get("spot_price_max") is not None and not params["spot_instance"]:
            raise UserInputError(
                "a spot bid is set but spot_instance is false",
                hint="Set 'spot_instance: true', or drop 'spot_price_max'",
                parameter="spot_price_max",
            )
        if params.get("spot_price_max") is not None and params["spot_price_max"] <= 0:
            raise UserInputError(
                "%s is not a positive price" % params["spot_price_max"],
                hint="Give the highest price per hour in USD, for example 0.5",
                parameter="spot_price_max",
            )
        hostname = params.get("hostname") or "nixforge-%s" % self.ident.build_id
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$", hostname):
            raise UserInputError(
                "%r is not a valid hostname" % hostname,
                hint="Use letters, digits, dots and hyphens",
                parameter="hostname",
            )
        self.ident.require_future_expiry()

        # The catalogue and the project (the first calls: a bad token fails here).
        self.check_project()
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
        bid = None
        if params["spot_instance"]:
            bid = params.get("spot_price_max")
            if bid is None:
                if on_demand is None:
                    raise UserInputError(
                        "the catalogue has no price for plan %s to bid with" % plan.get("slug"),
                        hint="Set 'spot_price_max'",
                        parameter="spot_price_max",
                    )
                bid = on_demand
            current = self.spot_price(plan.get("slug"), metro)
            if current is not None and bid < current:
                raise UserInputError(
                    "the bid %.4f is below the current spot price %.4f of %s in %s"
                    % (bid, current, plan["slug"], metro),
                    hint="Raise 'spot_price_max' to at least %.4f, or use 'spot_instance: false'" % current,
                    parameter="spot_price_max",
                )
        is_nixos = (os_entry.get("distro") or "").lower() == "nixos" or params["operating_system"].startswith("nixos")
        features = params.get("nix_system_features")
        if features is None:
            features = ["big-parallel", "benchmark"] + (["kvm", "nixos-test"] if kvm else [])
        if is_nixos:
            userdata = render_nixos_userdata(
                self.ident.build_id,
                params["operating_system"],
                params.get("host_key_private"),
                params.get("host_key_public"),
                [public_key],
                features,
                params.get("userdata"),
            )
        else:
            userdata = render_cloud_config(
                self.ident.build_id,
                params.get("host_key_private"),
                params.get("host_key_public"),
                [public_key],
                params.get("userdata"),
            )
        return dict(
            plan=plan,
            metro=metro,
            facility=facility,
            os=os_entry,
            kvm=kvm,
            bid=bid,
            on_demand=on_demand,
            hostname=hostname,
            userdata=userdata,
            public_key=public_key,
            architecture=catalogue.architecture(plan),
        )

    def spot_price(self, plan: Any, metro: str) -> Optional[float]:
        data = self.client.call("market/spot/prices/metros", what="Reading spot prices", missing_ok=True)
        if not data:
            return None
        entry = ((data.get("spot_market_prices") or {}).get(metro) or {}).get(plan) or {}
        price = entry.get("price")
        return float(price) if price is not None else None

    def present(self) -> None:
        spec = self.validate()
        devices = self.build_devices()
        failed = [d for d in devices if d.get("state") == "failed"]
        live = [d for d in devices if d.get("state") != "failed"]
        if len(live) > 1:
            raise ProviderError(
                "the build has %d devices (%s); it should have one"
                % (len(live), ", ".join(str(d.get("id")) for d in live)),
                hint="Run with 'state: absent' for this build id to remove them, then again with 'state: present'",
                what="Adopting the build's device",
            )
        for dev in failed:
            # A failed device never becomes usable: remove it (and start afresh below).
            if self.would_change("delete failed device %s" % dev.get("id")):
                self.delete_device(dev)
        keys = self.build_keys()
        device = live[0] if live else None
        self.result["adopted"] = device is not None
        key = self.ensure_key(keys, spec["public_key"], device)
        created = False
        if device is None:
            summary = "create device %s (%s in %s, %s%s)" % (
                spec["hostname"],
                spec["plan"]["slug"],
                spec["facility"] or spec["metro"],
                self.params["operating_system"],
                ", spot bid %.4f" % spec["bid"] if spec["bid"] is not None else "",
            )
            if not self.would_change(summary):
                self.result["device"] = {}
                return
            device = self.create_device(spec, key)
            created = True
        elif device.get("state") == "inactive":
            if self.would_change("power on device %s" % device.get("id")) and not self.check_mode:
                self.client.call(
                    "devices/%s/actions" % device["id"], "POST", {"type": "power_on"}, what="Powering the device on"
                )
        if self.check_mode:
            self.result["device"] = self.describe(device, spec, key)
            return
        if self.params["wait"]:
            try:
                device = self.wait_active(device)
            except NixforgeError as exc:
                self.cleanup_after_failure(device, exc, created)
        self.result["device"] = self.describe(device, spec, key)

    def ensure_key(
        self, keys: List[Dict[str, Any]], public_key: str, device: Optional[Dict[str, Any]]
    ) -> Dict[str, Any]:
        body = public_key.split()[:2]
        matching = [k for k in keys if (k.get("key") or "").split()[:2] == body]
        stale = [k for k in keys if k not in matching]
        if stale and device is not None and not matching:
            raise UserInputError(
                "the build's device was created with another SSH key than 'ssh_public_key'",
                hint="Give the key this build started with, or remove the build ('state: absent') and start again",
                parameter="ssh_public_key",
            )
        for key in stale:
            if self.would_change("delete stale project SSH key %s" % key.get("id")):
                self.client.call("ssh-keys/%s" % key["id"], "DELETE", what="Deleting a stale SSH key", missing_ok=True)
        if matching:
            return matching[0]
        # Metal refuses a second project key with the same fingerprint: a key somebody added to
        # the project by hand is used as is, and left in place at the end (it is not ours).
        data = self.client.call("projects/%s/ssh-keys" % self.project_id, what="Listing the project's SSH keys") or {}
        for other in data.get("ssh_keys") or []:
            if (other.get("key") or "").split()[:2] == body:
                self.module.warn(
                    "ssh_public_key is already the project's SSH key %s (%s); using it and leaving it in place"
                    % (other.get("id"), other.get("label"))
                )
                return other
        if not self.would_change("create project SSH key %s" % self.key_label):
            return {}
        params = {"label": self.key_label, "key": public_key, "tags": tag_list(self.ident.tags())}
        path = "projects/%s/ssh-keys" % self.project_id

        def find() -> Optional[Dict[str, Any]]:
            found = [k for k in self.build_keys() if (k.get("key") or "").split()[:2] == body]
            return found[0] if found else None

        return self.client.create_idempotent(path, params, find, "Creating the per-build SSH key", "ssh_public_key")

    def create_device(self, spec: Dict[str, Any], key: Dict[str, Any]) -> Dict[str, Any]:
        body: Dict[str, Any] = {
            "hostname": spec["hostname"],
            "plan": spec["plan"]["slug"],
            "operating_system": self.params["operating_system"],
            "billing_cycle": "hourly",
            "tags": tag_list(self.ident.tags()),
            "userdata": spec["userdata"],
            "project_ssh_keys": [key["id"]] if key.get("id") else [],
            "termination_time": self.ident.expires_at_str,
            "locked": False,
            "customdata": {"nixforge": self.ident.as_dict()},
        }
        if spec["facility"] and not self.params.get("metro"):
            body["facility"] = spec["facility"]
        else:
            body["metro"] = spec["metro"]
        if spec["bid"] is not None:
            body["spot_instance"] = True
            body["spot_price_max"] = spec["bid"]

        def find() -> Optional[Dict[str, Any]]:
            found = [d for d in self.build_devices() if d.get("state") != "failed"]
            return found[0] if found else None

        try:
            return self.client.create_idempotent(
                "projects/%s/devices" % self.project_id, body, find, "Creating the device", "plan"
            )
        except NixforgeError as exc:
            # Nothing usable was created; the key was made for this device only.
            self.delete_build_keys()
            raise exc from None

    def wait_active(self, device: Dict[str, Any]) -> Dict[str, Any]:
        device_id = device["id"]
        last: Dict[str, Any] = {"device": device}

        def probe() -> Dict[str, Any]:
            current = self.get_device(device_id)
            if current is None:
                raise ProviderError(
                    "device %s disappeared while provisioning" % device_id,
                    hint="Its termination_time may have passed; check 'ttl'/'expires_at'",
                    what="Waiting for the device to become active",
                )
            last["device"] = current
            state = current.get("state")
            if state == "failed":
                raise ProviderError(
                    "device %s ended in state 'failed' (%s)" % (device_id, self.failure_reason(current)),
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

        return wait_for(
            probe,
            timeout=self.params["wait_timeout"],
            what="device %s to become active" % device_id,
            done=lambda d: d.get("state") == "active" and bool(self.public_ipv4(d)),
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

    @staticmethod
    def failure_reason(device: Dict[str, Any]) -> str:
        for event in reversed(device.get("provisioning_events") or []):
            if "fail" in str(event.get("type", "")) or event.get("state") == "failed":
                return str(event.get("body") or event.get("interpolated") or event.get("type"))
        return "no reason given"

    def cleanup_after_failure(self, device: Dict[str, Any], exc: NixforgeError, created: bool) -> None:
        """Delete the device and key of this build, then fail with what happened."""
        cleaned = []
        try:
            current = self.get_device(device["id"])
            if current is not None and current.get("state") not in GONE_STATES:
                self.delete_device(current)
            self.wait_gone([device["id"]], min(self.params["wait_timeout"], 600))
            cleaned.append("device %s" % device["id"])
            cleaned.extend("SSH key %s" % k for k in self.delete_build_keys())
        except NixforgeError as cleanup_error:
            self.fail(
                "%s Cleaning up failed too: %s" % (exc.format(), cleanup_error.format()),
                hint="Run this task again with 'state: absent' for build %s" % self.params["build_id"],
            )
        self.result["changed"] = True
        exc.hint = ((exc.hint.rstrip(".") + ". ") if exc.hint else "") + (
            "Deleted what the build had created (%s); nothing is left behind" % ", ".join(cleaned)
        )
        raise exc

    def describe(self, device: Dict[str, Any], spec: Dict[str, Any], key: Dict[str, Any]) -> Dict[str, Any]:
        plan = device.get("plan") or spec["plan"]
        metro = (device.get("metro") or {}).get("code") or spec["metro"]
        facility = (device.get("facility") or {}).get("code") or spec["facility"]
        addresses = [
            {
                "address": a.get("address"),
                "address_family": a.get("address_family"),
                "public": a.get("public"),
                "cidr": a.get("cidr"),
                "gateway": a.get("gateway"),
            }
            for a in device.get("ip_addresses") or []
        ]
        spot = bool(device.get("spot_instance"))
        bid = device.get("spot_price_max") if spot else None
        return {
            "id": device.get("id"),
            "hostname": device.get("hostname"),
            "state": device.get("state"),
            "plan": plan.get("slug") if isinstance(plan, dict) else plan,
            "metro": metro,
            "facility": facility,
            "operating_system": (device.get("operating_system") or {}).get("slug") or self.params["operating_system"],
            "architecture": spec["architecture"],
            "kvm": spec["kvm"],
            "public_ipv4": self.public_ipv4(device),
            "private_ipv4": self.address(device, 4, False),
            "public_ipv6": self.address(device, 6, True),
            "ip_addresses": addresses,
            "ssh_user": "root",
            "ssh_key_id": key.get("id"),
            "host_public_key": (self.params.get("host_key_public") or "").strip() or None,
            "spot_instance": spot,
            "spot_price_max": bid,
            "price_per_hour": bid if bid is not None else spec["on_demand"],
            "termination_time": device.get("termination_time"),
            "created_at": device.get("created_at"),
            "tags": tag_dict(device.get("tags")),
        }

    @staticmethod
    def address(device: Dict[str, Any], family: int, public: bool) -> Optional[str]:
        for entry in device.get("ip_addresses") or []:
            if entry.get("address_family") == family and bool(entry.get("public")) == public:
                return entry.get("address")
        return None

    def public_ipv4(self, device: Dict[str, Any]) -> Optional[str]:
        return self.address(device, 4, True)

    # -- absent ----------------------------------------------------------------------

    def delete_device(self, device: Dict[str, Any]) -> None:
        if device.get("locked"):
            raise UserInputError(
                "device %s is locked against deletion" % device.get("id"),
                hint="Unlock it in the Metal console (or with 'metal device update --locked=false'), then run again",
                what="Deleting the device",
            )
        self.client.call(
            "devices/%s" % device["id"], "DELETE", what="Deleting device %s" % device["id"], missing_ok=True
        )

    def delete_key(self, key_id: str) -> None:
        self.client.call("ssh-keys/%s" % key_id, "DELETE", what="Deleting the build's SSH key", missing_ok=True)

    def delete_build_keys(self) -> List[str]:
        removed = []
        for key in self.build_keys():
            self.delete_key(key["id"])
            removed.append(key["id"])
        return removed

    def wait_gone(self, device_ids: List[str], timeout: float) -> None:
        if not device_ids:
            return

        def probe() -> List[str]:
            return [i for i in device_ids if self.get_device(i) is not None]

        wait_for(
            probe,
            timeout=timeout,
            what="device(s) %s to be gone" % ", ".join(device_ids),
            done=lambda remaining: not remaining,
            interval=1.0,
            max_interval=10.0,
            describe=lambda remaining: "still there: %s" % ", ".join(remaining),
        )

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

    def absent(self) -> None:
        self.check_project()
        devices = self.build_devices(include_gone=True)
        keys = self.build_keys()
        removed: Dict[str, List[str]] = {"devices": [], "ssh_keys": []}
        self.result["removed"] = removed
        for device in devices:
            removed["devices"].append(device["id"])
            if device.get("state") in GONE_STATES:
                continue  # already going; waited for below
            if self.would_change("delete device %s" % device["id"]):
                self.delete_device(device)
        for key in keys:
            removed["ssh_keys"].append(key["id"])
            if self.would_change("delete project SSH key %s" % key["id"]):
                self.client.call(
                    "ssh-keys/%s" % key["id"], "DELETE", what="Deleting the build's SSH key", missing_ok=True
                )
        if devices and self.params["wait"] and not self.check_mode:
            self.wait_gone([d["id"] for d in devices], self.params["wait_timeout"])
        if devices and not self.result["changed"]:
            # Only devices already deprovisioning were found: nothing changed by us.
            self.result["changed"] = False


def main() -> None:
    MetalDevice().execute()


if __name__ == "__main__":
    main()
