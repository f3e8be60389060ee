#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: ec2_spot_host
short_description: An EC2 spot (or on-demand) builder host for one build, and its removal
version_added: 0.1.0
description:
  - Launches one EC2 instance for a build through an instant EC2 Fleet over a list of instance types and
    subnets (availability zones), reachable over SSH only from the controller, with the SSH host key generated
    on the controller and pinned, and set to power itself off (and so terminate) at the build's expiry.
  - Everything it creates is tagged with the build id (C(nixforge-build-id)), the pipeline and the expiry, namely
    the instance and its root volume, the key pair, the security group, the launch template and the fleet.
  - With O(state=present) a second run with the same O(build_id) while the instance is pending or running adopts
    it and reports no change. With O(state=absent) every resource of the build is removed, waiting until the
    instance is terminated; a second run reports no change. With O(state=absent) and O(wait=false) the
    termination is only started and what does not depend on it is removed; the security group and volumes, which
    EC2 lets go only once the instance is terminated, are returned in RV(left) for a later run with
    O(state=absent), which waits for the termination and removes them.
  - Input is checked before anything is created (region, credentials, AMI, instance type architecture, SSH
    CIDR, keys). When a launch fails, whatever the run created is removed again before the module fails.
author:
  - nixforge.images contributors (@nixforge)
extends_documentation_fragment:
  - nixforge.images.common
  - nixforge.images.common.wait
  - nixforge.images.common.builder
  - nixforge.images.ec2
  - nixforge.images.attributes
  - nixforge.images.attributes.cloud
  - nixforge.images.attributes.diff_none
  - nixforge.images.attributes.actiongroup_aws
options:
  state:
    description:
      - V(present) launches (or adopts) the build's instance, V(absent) removes every resource of the build.
    type: str
    choices: [present, absent]
    default: present
  image_id:
    description:
      - AMI to boot. When not set, the newest available AMI from O(image_owner) whose name matches O(image_name)
        (by default the official Debian O(debian_release) image for O(architecture)) is used.
    type: str
  debian_release:
    description:
      - Debian release of the default AMI.
      - Debian 10 (buster) has Python 3.7; ansible-core 2.19 and later need Python 3.8 or newer on managed hosts,
        so with V(10) plays that run modules on the builder fail unless a newer Python is installed first (for
        example through C(ansible.builtin.raw)). Prefer V(12) or V(13).
    type: str
    choices: ['10', '12', '13']
    default: '13'
  architecture:
    description:
      - CPU architecture of the default AMI and of the instance types; every type in O(instance_types) must
        support it.
    type: str
    choices: [arm64, x86_64]
    default: arm64
  image_owner:
    description:
      - Account owning the AMI (the default is Debian's cloud team).
    type: str
    default: '136693071363'
  image_name:
    description:
      - AMI name pattern (C(*) wildcards). Default C(debian-<debian_release>-<arm64|amd64>-*), which excludes the
        backports images.
    type: str
  instance_types:
    description:
      - Candidate instance types, in order of preference.
      - Default for V(arm64) is V(a1.2xlarge), V(c6g.2xlarge), V(c7g.2xlarge), V(m7g.2xlarge) (8 vCPUs each, cheapest
        first); for V(x86_64) V(c6i.2xlarge), V(c7i.2xlarge), V(m6i.2xlarge), V(c5.2xlarge).
      - Their architecture is checked against the AMI's before anything is created.
    type: list
    elements: str
  subnet_ids:
    description:
      - Subnets to launch into, one per availability zone to try; all in the same VPC.
      - Default is the default subnets of the region's default VPC, limited to O(availability_zones) if given.
    type: list
    elements: str
  availability_zones:
    description:
      - Limit the default subnets to these availability zones. Ignored with O(subnet_ids).
    type: list
    elements: str
  market:
    description:
      - V(spot) for spot capacity, V(on-demand) to skip spot entirely.
    type: str
    choices: [spot, on-demand]
    default: spot
  on_demand_fallback:
    description:
      - When no spot candidate has capacity, launch on-demand over the same candidates instead of failing.
    type: bool
    default: false
  allocation_strategy:
    description:
      - How the fleet chooses among the spot candidates.
      - V(capacity-optimized-prioritized) follows the order of O(instance_types).
    type: str
    choices: [price-capacity-optimized, capacity-optimized, capacity-optimized-prioritized, lowest-price, diversified]
    default: price-capacity-optimized
  max_price:
    description:
      - Highest spot price per instance-hour in USD, such as V(0.25).
      - When not set (or empty), EC2's own default applies, which is the on-demand price of the type in the region;
        the module reports the on-demand price from its table (see O(on_demand_prices)) as the upper bound.
    type: float
  on_demand_prices:
    description:
      - On-demand prices (USD per hour) by instance type, overriding the module's small built-in table (us-east-1
        Linux prices). Used for the reported price upper bound, and sent as the spot max price of a type listed
        here when O(max_price) is not set.
    type: dict
    default: {}
  nested_virtualization:
    description:
      - Give the builder C(/dev/kvm) without bare metal, through EC2's nested virtualization CPU option
        (C(CpuOptions.NestedVirtualization=enabled), set in the build's launch template).
      - EC2 offers it on Intel types, C8i, M8i, R8i and their flex variants as its API reference says (for example
        V(c8i.2xlarge), V(m8i.2xlarge), V(c8i-flex.2xlarge)); C(DescribeInstanceTypes) lists
        C(nested-virtualization) in their C(ProcessorInfo.SupportedFeatures), and its answer decides (it also lists
        7th-generation Intel families such as C7i and M7i). Bare-metal types (C(*.metal)) have
        KVM anyway and may be later candidates; they are launched from a second launch template without the
        option, which EC2 refuses for them.
      - Every other type in O(instance_types) is refused before anything is created, with the types that would do.
      - Needs an V(x86_64) image. When EC2 refuses the option on spot capacity (C(UnsupportedOperation) or
        C(InvalidParameterCombination) for the spot market), the candidates are dropped from the spot market like
        capacity errors, so O(on_demand_fallback=true) then launches on-demand.
    type: bool
    default: false
    version_added: 0.2.0
  volume_size:
    description:
      - Root volume size in GiB. The volume is deleted when the instance terminates.
    type: int
    default: 16
  volume_type:
    description:
      - Root volume type.
    type: str
    choices: [gp3, gp2, io1, io2, st1, sc1, standard]
    default: gp3
  key_name:
    description:
      - Name of an existing EC2 key pair to use instead of importing O(public_key). The module never deletes it.
      - One of O(public_key) and O(key_name) is required with O(state=present), and both O(host_key_private)
        and O(host_key_public).
    type: str
  ssh_cidr:
    description:
      - Networks allowed to reach SSH (port 22), usually the controller's address as a C(/32).
      - V(auto) asks O(ssh_cidr_lookup_url) for the controller's public IPv4 address.
      - Required with O(state=present).
    type: list
    elements: str
  ssh_cidr_lookup_url:
    description:
      - URL answering with the caller's public IPv4 address as plain text, used by O(ssh_cidr=auto).
    type: str
    default: https://checkip.amazonaws.com/
  ssh_user:
    description: Login user of the image, returned for the inventory. Debian's images use V(admin).
    type: str
    default: admin
  user_data:
    description:
      - Extra user data. A C(#cloud-config) document is merged into the module's own (lists such as C(runcmd) are
        appended; the SSH host key settings cannot be overridden). Anything else, such as a shell script, is sent
        as a second part of a MIME multi-part document.
    type: str
  instance_name:
    description: Value of the C(Name) tag of the instance and volume. Default C(nixforge-<build_id>).
    type: str
  public_ip:
    description:
      - Give the instance a public IPv4 address and connect to it. With V(false) the module waits for and
        returns the private address (the controller must reach the subnet, for example over a VPN).
    type: bool
    default: true
  cleanup_on_failure:
    description: When the launch or the wait fails, remove every resource of the build before failing.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    details:
      - Checks the input against EC2 (AMI, instance types, subnets) and reports what it would create or remove.
notes:
  - The instance powers itself off at the expiry (a C(systemd-run --on-calendar) timer from the user data) and
    its shutdown behaviour is C(terminate), so it ends even when the controller is gone; C(playbooks/reap.yml)
    removes what is left of expired builds.
  - Capacity errors (C(InsufficientInstanceCapacity) and similar) of one candidate (instance type x zone) make
    the module try the remaining candidates; the errors met on the way are returned in RV(candidate_errors).
"""

EXAMPLES = r"""
- name: Launch an AArch64 builder for this build
  nixforge.images.ec2_spot_host:
    build_id: sd-aarch64-20261122-1
    ttl: 2h
    region: us-east-2
    public_key: "{{ lookup('ansible.builtin.file', build_dir ~ '/id_ed25519.pub') }}"
    host_key_private: "{{ lookup('ansible.builtin.file', build_dir ~ '/ssh_host_ed25519_key') }}"
    host_key_public: "{{ lookup('ansible.builtin.file', build_dir ~ '/ssh_host_ed25519_key.pub') }}"
    ssh_cidr: "{{ controller_ip }}/32"
  register: builder

- name: Same, on Debian 12, only the newest Graviton types, on-demand if spot has no capacity
  nixforge.images.ec2_spot_host:
    build_id: sd-aarch64-20261122-1
    debian_release: '12'
    instance_types: [c7g.2xlarge, m7g.2xlarge]
    on_demand_fallback: true
    public_key: "{{ builder_pubkey }}"
    host_key_private: "{{ host_key }}"
    host_key_public: "{{ host_key_pub }}"
    ssh_cidr: auto

- name: A KVM builder (DigitalOcean images) without bare metal, with bare metal as the last resort
  nixforge.images.ec2_spot_host:
    build_id: do-20261207-1
    architecture: x86_64
    nested_virtualization: true
    instance_types: [c8i.2xlarge, m8i.2xlarge, c8i.4xlarge, c5.metal]
    on_demand_fallback: true
    public_key: "{{ builder_pubkey }}"
    host_key_private: "{{ host_key }}"
    host_key_public: "{{ host_key_pub }}"
    ssh_cidr: auto

- name: Remove everything of the build
  nixforge.images.ec2_spot_host:
    build_id: sd-aarch64-20261122-1
    region: us-east-2
    state: absent
"""

RETURN = r"""
instance_id:
  description: Id of the build's instance.
  returned: state is present and not in check mode
  type: str
  sample: i-0abcd1234ef567890
instance_type:
  description: Instance type that was launched.
  returned: state is present and not in check mode
  type: str
  sample: c7g.2xlarge
availability_zone:
  description: Availability zone of the instance.
  returned: state is present and not in check mode
  type: str
  sample: us-east-2b
subnet_id:
  description: Subnet of the instance.
  returned: state is present and not in check mode
  type: str
lifecycle:
  description: V(spot) or V(on-demand).
  returned: state is present and not in check mode
  type: str
  sample: spot
public_ip:
  description: Public IPv4 address, if any.
  returned: state is present and not in check mode
  type: str
  sample: 203.0.113.10
private_ip:
  description: Private IPv4 address.
  returned: state is present and not in check mode
  type: str
ssh_host:
  description: Address to connect to (the public address, or the private one with O(public_ip=false)).
  returned: state is present and not in check mode
  type: str
ssh_port:
  description: SSH port.
  returned: state is present
  type: int
  sample: 22
ssh_user:
  description: Login user of the image.
  returned: state is present
  type: str
  sample: admin
host_public_key:
  description: The instance's SSH host public key (O(host_key_public)), to pin in known_hosts.
  returned: state is present
  type: str
image_id:
  description: AMI the instance was (or would be) launched from.
  returned: state is present
  type: str
image_name:
  description: Name of that AMI.
  returned: state is present
  type: str
key_name:
  description: Key pair the instance was launched with.
  returned: state is present
  type: str
kvm:
  description:
    - Whether the builder has hardware virtualisation (C(/dev/kvm)), the Nix system feature C(kvm) that nixpkgs'
      C(make-disk-image) needs - a bare-metal type, or the nested virtualization CPU option.
  returned: state is present and not in check mode
  type: bool
  sample: true
nested_virtualization:
  description: Whether the instance runs with the nested virtualization CPU option (its C(CpuOptions)).
  returned: state is present and not in check mode
  type: bool
  sample: true
security_group_id:
  description: Id of the build's security group.
  returned: state is present and not in check mode
  type: str
launch_template_id:
  description: Id of the build's launch template.
  returned: state is present, not in check mode, and the instance was launched by this run
  type: str
launch_template_ids:
  description:
    - Ids of the build's launch templates by kind, V(nested) (with the nested virtualization CPU option) and
      V(plain); two only with O(nested_virtualization=true) and bare-metal candidates.
  returned: state is present, not in check mode, and the instance was launched by this run
  type: dict
  sample: {nested: lt-0abc, plain: lt-0def}
fleet_id:
  description: Id of the instant fleet that launched the instance.
  returned: state is present and not in check mode
  type: str
spot_price:
  description:
    - Latest spot price of the instance type in its zone (USD per hour) from the spot price history; null when
      EC2 has none or the instance is on-demand.
  returned: state is present and not in check mode
  type: float
max_price:
  description:
    - Upper bound of the hourly price (USD) - the spot max price, else the on-demand price from the table; null
      when the type is not in the table.
  returned: state is present and not in check mode
  type: float
max_price_source:
  description: Where RV(max_price) comes from, V(max_price), V(on_demand_prices), V(table) or V(unknown).
  returned: state is present and not in check mode
  type: str
adopted:
  description: Whether an instance of the build was already running and was adopted.
  returned: state is present
  type: bool
launched_at:
  description: Launch time of the instance (UTC ISO-8601).
  returned: state is present and not in check mode
  type: str
candidate_errors:
  description: Capacity errors met on the way, one per failed candidate.
  returned: state is present
  type: list
  elements: dict
  sample: [{instance_type: a1.2xlarge, availability_zone: us-east-2a, lifecycle: spot,
            code: InsufficientInstanceCapacity, message: There is no Spot capacity available}]
build:
  description: Build id, pipeline and expiry (from the instance's tags when adopted).
  returned: always
  type: dict
  sample: {build_id: sd-aarch64-1, pipeline: default, expires_at: '2026-11-22T13:00:00Z'}
tags:
  description: Tags put on the resources.
  returned: state is present
  type: dict
actions:
  description: What the module did (or would do in check mode), in order.
  returned: when changed
  type: list
  elements: str
removed:
  description: Ids of the resources removed (or that would be removed in check mode), by kind.
  returned: state is absent
  type: dict
  sample: {instances: [i-0abc], fleets: [fleet-1], launch_templates: [lt-1], security_groups: [sg-1],
           key_pairs: [nixforge-b1-ssh], volumes: []}
left:
  description: With O(wait=false), the resources that can go only once the build's instances are terminated (security
    groups, volumes), by kind, for a later run with O(state=absent); empty when nothing was left.
  returned: state is absent
  type: dict
  sample: {security_groups: [sg-1]}
ended:
  description: Instances of the build that EC2 ended (spot interruption, a C(Server.*) reason) or that powered
    themselves off at expiry, with EC2's state reason.
  returned: state is absent
  type: list
  elements: dict
  sample: [{instance_id: i-0abc, code: Server.SpotInstanceTermination, message: Spot instance termination}]
"""

from typing import Any, Dict, List, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import NixforgeError
from ansible_collections.nixforge.images.plugins.module_utils._base._module import Action, NixforgeModule
from ansible_collections.nixforge.images.plugins.module_utils._ec2._client import (
    REQUIRED_LIBRARIES,
    AwsClient,
    ec2_argument_spec,
    ec2_client,
)
from ansible_collections.nixforge.images.plugins.module_utils._ec2._fleet import (
    STRATEGIES,
    Fleet,
    instance_type_list,
    order_candidates,
    price_bound,
)
from ansible_collections.nixforge.images.plugins.module_utils._ec2._input import (
    check_present_input,
    encode_user_data,
    render_user_data,
)
from ansible_collections.nixforge.images.plugins.module_utils._ec2._launch import DEBIAN_OWNER, VOLUME_TYPES, Launch
from ansible_collections.nixforge.images.plugins.module_utils._ec2._nested import classify, template_groups
from ansible_collections.nixforge.images.plugins.module_utils._ec2._resources import (
    LIVE_STATES,
    SSH_PORT,
    BuildResources,
)


class Ec2SpotHost(NixforgeModule):
    provider_argument_spec = ec2_argument_spec()
    required_libraries = REQUIRED_LIBRARIES
    argument_spec = dict(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        image_id=dict(type="str"),
        debian_release=dict(type="str", choices=["10", "12", "13"], default="13"),
        architecture=dict(type="str", choices=["arm64", "x86_64"], default="arm64"),
        image_owner=dict(type="str", default=DEBIAN_OWNER),
        image_name=dict(type="str"),
        instance_types=dict(type="list", elements="str"),
        subnet_ids=dict(type="list", elements="str"),
        availability_zones=dict(type="list", elements="str"),
        market=dict(type="str", choices=["spot", "on-demand"], default="spot"),
        on_demand_fallback=dict(type="bool", default=False),
        allocation_strategy=dict(type="str", choices=STRATEGIES, default="price-capacity-optimized"),
        max_price=dict(type="float"),
        on_demand_prices=dict(type="dict", default={}),
        nested_virtualization=dict(type="bool", default=False),
        volume_size=dict(type="int", default=16),
        volume_type=dict(type="str", choices=VOLUME_TYPES, default="gp3"),
        public_key=dict(type="str", no_log=False),
        key_name=dict(type="str", no_log=False),
        ssh_cidr=dict(type="list", elements="str"),
        ssh_cidr_lookup_url=dict(type="str", default="https://checkip.amazonaws.com/"),
        ssh_user=dict(type="str", default="admin"),
        host_key_private=dict(type="str", no_log=True),
        host_key_public=dict(type="str", no_log=False),
        user_data=dict(type="str"),
        instance_name=dict(type="str"),
        cleanup_on_failure=dict(type="bool", default=True),
        public_ip=dict(type="bool", default=True),
    )
    module_kwargs = dict(
        mutually_exclusive=[["public_key", "key_name"], ["image_id", "image_name"]],
        required_together=[["host_key_private", "host_key_public"]],
    )

    _client: Optional[AwsClient] = None
    adopting: List[Dict[str, Any]] = []
    cleanup_error: Optional[str] = None

    @property
    def client(self) -> AwsClient:
        if self._client is None:
            self._client = ec2_client(self.params)
        return self._client

    # -- prepare: check the input, look up what exists -------------------------------------

    def prepare(self) -> None:
        self.result["build"] = self.identity.as_dict()
        self.resources = BuildResources(self.client, self.identity, self.params["wait"], self.params["wait_timeout"])
        self.engine = Launch(self.client, self.identity, self.params, self.warn, self.resources)
        if self.params["state"] == "absent":
            self.found, self.result["ended"] = self.resources.find(), self.resources.ended()
            return
        self.check_input()
        self.adopting = self.resources.find_instances(LIVE_STATES)
        if self.adopting:
            self.adopt(self.adopting)
            return
        self.identity.require_future_expiry()
        self.look_up()

    def check_input(self) -> None:
        """Everything that needs no API call, first."""
        p = self.params
        checked = check_present_input(p, self.warn)
        self.host_key, self.public_key, self.cidrs = checked.host_key, checked.public_key, checked.cidrs
        self.max_price, self.price_overrides = checked.max_price, checked.price_overrides
        self.tags = self.identity.tags({"Name": self.engine.instance_name})
        self.result.update(
            ssh_port=SSH_PORT,
            ssh_user=p["ssh_user"],
            host_public_key=self.host_key.public,
            tags=self.tags,
            candidate_errors=[],
        )

    def look_up(self) -> None:
        p, engine = self.params, self.engine
        self.image = engine.find_image()
        architecture = self.image.get("Architecture") or p["architecture"]
        instance_types = instance_type_list(p["instance_types"], architecture)
        described = engine.check_instance_types(instance_types, architecture)
        # nested virtualization: every type gives /dev/kvm, or nothing is created
        kinds = classify(instance_types, described) if p["nested_virtualization"] else {}
        self.templates = template_groups(kinds) if kinds else {"plain": instance_types}
        subnets = engine.find_subnets()
        candidates = order_candidates(instance_types, subnets)
        for c in candidates:
            c["template"] = "nested" if kinds.get(c["instance_type"]) == "nested" else "plain"
        self.candidates = engine.offered(candidates)
        self.vpc_id = subnets[0]["VpcId"]
        self.result.update(image_id=self.image["ImageId"], image_name=self.image.get("Name"), adopted=False)
        text = render_user_data(
            self.identity, self.host_key, [self.public_key] if self.public_key else [], p["user_data"]
        )
        self.user_data = encode_user_data(text)
        self.key_name = p["key_name"] or self.identity.ssh_key_name
        self.result["key_name"] = self.key_name
        if p["key_name"]:
            engine.check_key_pair_exists(p["key_name"])
        groups = self.resources.find_security_group(self.vpc_id)
        self.group = groups[0] if groups else None

    # -- plan: the same texts in check mode and in a real run ------------------------------

    def plan(self) -> List[Action]:
        if self.params["state"] == "absent":
            # wait=false: start the terminations, leave what must wait for them to a later run
            left: Optional[Dict[str, List[str]]] = None if self.params["wait"] else {}
            self.result["removed"], actions = self.resources.removal(self.found, left)
            self.result["left"] = left or {}
            return actions
        if self.adopting:
            return []
        p, build = self.params, self.identity
        undo = self.undo_build if p["cleanup_on_failure"] else None
        actions = []
        if self.public_key:
            actions.append(Action("import key pair %s" % self.key_name, self.import_key_pair, undo))
        if self.group:
            text = "update security group %s allowing SSH from %s" % (self.group["GroupId"], ", ".join(self.cidrs))
        else:
            text = "create security group %s allowing SSH from %s" % (build.resource_name("ssh"), ", ".join(self.cidrs))
        actions.append(Action(text, self.ensure_security_group, undo))
        for kind in self.templates:
            text = "create launch template %s (%s, %d GiB %s%s)" % (
                build.resource_name(self.template_suffix(kind)),
                self.image["ImageId"],
                p["volume_size"],
                p["volume_type"],
                ", nested virtualization" if kind == "nested" else "",
            )
            actions.append(Action(text, lambda kind=kind: self.create_launch_template(kind), undo))
        types = ", ".join(sorted(set(c["instance_type"] for c in self.candidates)))
        text = "launch an instant fleet over %d candidate(s): %s" % (len(self.candidates), types)
        actions.append(Action(text, self.launch, undo))
        return actions

    def apply(self, actions: List[Action]) -> None:
        try:
            super().apply(actions)
        except NixforgeError as exc:
            if self.cleanup_error:
                exc.msg = "%s; removing what was created also failed: %s (run again with state=absent)" % (
                    exc.msg.rstrip("."),
                    self.cleanup_error,
                )
            elif "removed" in self.result:
                exc.add_hint("Everything this build had created was removed again")
            raise

    # -- the actions -------------------------------------------------------------------------

    def import_key_pair(self) -> None:
        self.engine.import_key_pair(self.key_name, str(self.public_key), self.tags)

    def ensure_security_group(self) -> None:
        self.sg_id = self.engine.ensure_security_group(self.vpc_id, self.cidrs, self.tags, self.group)
        self.result["security_group_id"] = self.sg_id

    def template_suffix(self, kind: str) -> str:
        """``lt`` for the first template, ``lt-metal`` for bare metal next to a nested one."""
        return "lt-metal" if kind == "plain" and "nested" in self.templates else "lt"

    def create_launch_template(self, kind: str) -> None:
        data = self.engine.template_data(self.image, self.key_name, self.sg_id, self.user_data, kind == "nested")
        lt_id = self.engine.create_launch_template(data, self.tags, self.template_suffix(kind))
        self.lt_ids = dict(getattr(self, "lt_ids", {}), **{kind: lt_id})
        self.result["launch_template_ids"] = self.lt_ids
        self.result.setdefault("launch_template_id", lt_id)

    def launch(self) -> None:
        p = self.params
        markets = [p["market"]] + (["on-demand"] if p["market"] == "spot" and p["on_demand_fallback"] else [])
        fleet = Fleet(self.client, p["allocation_strategy"], self.max_price, self.price_overrides, self.tags, self.warn)
        if "nested" in self.lt_ids:
            # EC2 may refuse the CPU option on spot capacity: on-demand is then the fallback
            fleet.spot_refusal_codes = ("UnsupportedOperation", "InvalidParameterCombination")
        try:
            fleet_id, instance_id, lifecycle, candidate = fleet.launch(markets, self.candidates, self.lt_ids)
        finally:
            self.result["candidate_errors"] = fleet.candidate_errors
            if fleet.fleet_ids:
                self.result["fleet_ids"] = fleet.fleet_ids
        bound, source = price_bound(candidate["instance_type"], lifecycle, self.max_price, self.price_overrides)
        self.result["launch_template_id"] = self.lt_ids.get(
            candidate.get("template") or "plain", self.result.get("launch_template_id")
        )
        self.result.update(
            fleet_id=fleet_id, instance_id=instance_id, lifecycle=lifecycle, max_price=bound, max_price_source=source
        )
        instance = self.engine.wait_until_ready(instance_id)
        self.engine.enforce_safety(instance, self.sg_id)
        self.instance = instance

    def undo_build(self) -> None:
        """Remove every resource of the build (run once, whichever action's undo comes first)."""
        if "removed" in self.result or self.cleanup_error:
            return
        try:
            self.result["removed"] = self.resources.remove_all()
        except Exception as exc:
            self.cleanup_error = self.redact(str(exc))
            self.result["cleanup_error"] = self.cleanup_error
            raise

    # -- describe ----------------------------------------------------------------------------

    def describe(self) -> Dict[str, Any]:
        if self.params["state"] == "absent":
            return {}  # RV build stays the full identity set by prepare(), as documented
        if self.check_mode and not self.adopting:
            return {}
        return self.instance_result(self.instance)

    def instance_result(self, instance: Dict[str, Any]) -> Dict[str, Any]:
        result = self.engine.instance_result(instance, self.max_price, self.price_overrides)
        result.update(
            image_id=instance.get("ImageId", self.result.get("image_id")),
            key_name=instance.get("KeyName", self.result.get("key_name")),
        )
        return result

    def adopt(self, instances: List[Dict[str, Any]]) -> None:
        """Adopt the build's running builder (waiting for it here, in prepare(), so that
        describe() only reports)."""
        instance, facts = self.engine.adoption(instances, self.result["build"])
        self.result.update(facts)
        if not self.check_mode:
            instance = self.engine.wait_until_ready(instance["InstanceId"])
        self.instance = instance


def main() -> None:
    Ec2SpotHost().execute()


if __name__ == "__main__":
    main()
