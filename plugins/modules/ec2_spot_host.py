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
    instance is terminated; a second run reports no change.
  - Input is checked before anything is created (region, credentials, AMI, instance type architecture, SSH
    CIDR, keys). When a launch fails, whatever the run created is removed again before the module fails.
author:
  - nixforge.images contributors (@nixforge)
extends_documentation_fragment:
  - nixforge.images.common
  - nixforge.images.common.wait
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
      - Highest spot price per instance-hour in USD, as a decimal string such as V('0.25').
      - When not set (or empty), EC2's own default applies, which is the on-demand price of the type in the region;
        the module reports the on-demand price from its table (see O(on_demand_prices)) as the upper bound.
    type: str
  on_demand_prices:
    description:
      - On-demand prices (USD per hour) by instance type, overriding the module's small built-in table (us-east-1
        Linux prices). Used for the reported price upper bound, and sent as the spot max price of a type listed
        here when O(max_price) is not set.
    type: dict
    default: {}
  volume_size:
    description:
      - Root volume size in GiB. The volume is deleted when the instance terminates.
    type: int
    default: 16
    aliases: [root_volume_size]
  volume_type:
    description:
      - Root volume type.
    type: str
    choices: [gp3, gp2, io1, io2, st1, sc1, standard]
    default: gp3
    aliases: [root_volume_type]
  public_key:
    description:
      - OpenSSH public key to log in with (for example the content of a per-build C(id_ed25519.pub) generated on
        the controller). It is imported as a key pair named C(nixforge-<build_id>), tagged with the build and
        removed with it, and also put in the user data as an authorized key.
      - One of O(public_key) and O(key_name) is required with O(state=present).
    type: str
  key_name:
    description:
      - Name of an existing EC2 key pair to use instead of importing O(public_key). The module never deletes it.
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
    description:
      - Login user of the image, returned for the inventory. Debian's images use V(admin).
    type: str
    default: admin
  host_key_private:
    description:
      - Private SSH host key (OpenSSH format) the instance uses, generated on the controller so that its public
        half can be pinned in a known_hosts file before the first connection. Never logged.
      - Required with O(state=present), together with O(host_key_public).
    type: str
  host_key_public:
    description:
      - Public half of O(host_key_private) (for example C(ssh-ed25519 AAAA...)), returned as RV(host_public_key).
    type: str
  user_data:
    description:
      - Extra user data. A C(#cloud-config) document is merged into the module's own (lists such as C(runcmd) are
        appended; the SSH host key settings cannot be overridden). Anything else, such as a shell script, is sent
        as a second part of a MIME multi-part document.
    type: str
  instance_name:
    description:
      - Value of the C(Name) tag of the instance and volume. Default C(nixforge-<build_id>).
    type: str
  public_ip:
    description:
      - Give the instance a public IPv4 address and connect to it. With V(false) the module waits for and
        returns the private address (the controller must reach the subnet, for example over a VPN).
    type: bool
    default: true
  cleanup_on_failure:
    description:
      - When the launch or the wait fails, remove every resource of the build before failing.
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
seealso:
  - name: EC2 Fleet instant type
    description: How an instant fleet launches over several instance types and zones.
    link: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instant-fleet.html
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
security_group_id:
  description: Id of the build's security group.
  returned: state is present and not in check mode
  type: str
launch_template_id:
  description: Id of the build's launch template.
  returned: state is present, not in check mode, and the instance was launched by this run
  type: str
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
           key_pairs: [nixforge-b1], volumes: []}
"""

import base64
import datetime
import functools
import ipaddress
import math
import socket
import time
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible.module_utils.urls import open_url
from ansible_collections.nixforge.images.plugins.module_utils.common import (
    TAG_BUILD_ID,
    TAG_EXPIRES_AT,
    TAG_PIPELINE,
    BuildIdentity,
    NixforgeModule,
    format_timestamp,
)
from ansible_collections.nixforge.images.plugins.module_utils.ec2 import (
    CAPACITY_ERROR_CODES,
    REQUIRED_LIBRARIES,
    AwsClient,
    ec2_argument_spec,
    ec2_client,
    filters,
    tag_dict,
    tag_specifications,
)
from ansible_collections.nixforge.images.plugins.module_utils.errors import (
    NixforgeError,
    ProviderError,
    UserInputError,
)
from ansible_collections.nixforge.images.plugins.module_utils.waiter import wait_for

try:
    import yaml

    HAS_YAML = True
    YAML_IMPORT_ERROR: Optional[str] = None
except ImportError:  # pragma: no cover - ansible-core depends on PyYAML
    import traceback

    HAS_YAML = False
    YAML_IMPORT_ERROR = traceback.format_exc()

DEBIAN_OWNER = "136693071363"
DEBIAN_ARCH = {"arm64": "arm64", "x86_64": "amd64"}
DEFAULT_INSTANCE_TYPES = {
    "arm64": ["a1.2xlarge", "c6g.2xlarge", "c7g.2xlarge", "m7g.2xlarge"],
    "x86_64": ["c6i.2xlarge", "c7i.2xlarge", "m6i.2xlarge", "c5.2xlarge"],
}
# On-demand Linux prices in us-east-1, USD per hour (AWS price list, 2026). Other regions
# cost up to about a third more; override with the on_demand_prices option.
ON_DEMAND_PRICES = {
    "a1.2xlarge": 0.204,
    "a1.4xlarge": 0.408,
    "a1.metal": 0.408,
    "c6g.2xlarge": 0.272,
    "c6g.4xlarge": 0.544,
    "c6g.metal": 2.176,
    "c7g.2xlarge": 0.289,
    "c7g.4xlarge": 0.578,
    "c7g.metal": 2.32,
    "m6g.2xlarge": 0.308,
    "m7g.2xlarge": 0.3264,
    "m7g.metal": 2.611,
    "c5.2xlarge": 0.34,
    "c5.metal": 4.08,
    "c6i.2xlarge": 0.34,
    "c6i.metal": 5.44,
    "c7i.2xlarge": 0.357,
    "m5.metal": 4.608,
    "m6i.2xlarge": 0.384,
    "m6i.metal": 6.144,
}
SSH_PORT = 22
LIVE_STATES = ["pending", "running"]
NOT_TERMINATED_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
USER_DATA_LIMIT = 16384
# cloud-config keys whose lists are concatenated when the user's user data is merged in.
_MERGED_LIST_KEYS = ("bootcmd", "runcmd", "ssh_authorized_keys", "packages", "write_files")
_PROTECTED_KEYS = ("ssh_keys", "ssh_deletekeys")
_HOST_KEY_TYPES = {
    "ssh-ed25519": "ed25519",
    "ecdsa-sha2-nistp256": "ecdsa",
    "ecdsa-sha2-nistp384": "ecdsa",
    "ecdsa-sha2-nistp521": "ecdsa",
    "ssh-rsa": "rsa",
}
_PUBLIC_KEY_PREFIXES = (*_HOST_KEY_TYPES, "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


# -- pure logic (unit-tested) --------------------------------------------------------------


def parse_ssh_cidrs(values: Optional[List[str]]) -> List[str]:
    """Validate the ``ssh_cidr`` networks (``auto`` is resolved before); return them normalised."""
    if not values:
        raise UserInputError(
            "no network is allowed to reach SSH",
            hint="Set 'ssh_cidr' to the controller's address, for example '203.0.113.7/32', or to 'auto'",
            parameter="ssh_cidr",
        )
    result = []
    for value in values:
        text = str(value).strip()
        if "/" not in text:
            raise UserInputError(
                "%r is not a CIDR network (no prefix length)" % text,
                hint="Write a single address as '%s/32' (IPv6: '/128')" % text,
                parameter="ssh_cidr",
            )
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            hint = "Use the form '203.0.113.7/32' or '198.51.100.0/24'"
            if "host bits set" in str(exc):
                network = ipaddress.ip_network(text, strict=False)
                hint = "Use '%s' for the network, or '%s/%d' for the single address" % (
                    network,
                    text.split("/", maxsplit=1)[0],
                    network.max_prefixlen,
                )
            raise UserInputError(
                "%r is not a valid CIDR network (%s)" % (text, exc), hint=hint, parameter="ssh_cidr"
            ) from None
        result.append(str(network))
    return result


def is_wide_open(cidrs: List[str]) -> bool:
    return any(ipaddress.ip_network(c).prefixlen == 0 for c in cidrs)


def validate_public_key(value: str, parameter: str) -> str:
    """An OpenSSH public key line; the message never echoes the value (it might be a private key)."""
    text = (value or "").strip()
    if "PRIVATE KEY" in text:
        raise UserInputError(
            "the value is a private key",
            hint="Give the public half (the '.pub' file); private keys never leave the controller",
            parameter=parameter,
        )
    parts = text.split()
    if len(parts) < 2 or not parts[0].startswith(_PUBLIC_KEY_PREFIXES) or "\n" in text:
        raise UserInputError(
            "the value is not an OpenSSH public key line",
            hint="Give one line such as 'ssh-ed25519 AAAAC3Nza... comment'",
            parameter=parameter,
        )
    try:
        base64.b64decode(parts[1].encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise UserInputError(
            "the key data of the public key is not base64",
            hint="Copy the whole '.pub' line unchanged",
            parameter=parameter,
        ) from None
    return text


def validate_host_keys(private: Optional[str], public: Optional[str]) -> Tuple[str, str, str]:
    """Return ``(key type for cloud-init, private, public)``."""
    if not private or not public:
        missing = "host_key_private" if not private else "host_key_public"
        raise UserInputError(
            "the builder's SSH host key is missing",
            hint="Generate one on the controller (ssh-keygen -t ed25519) and give both 'host_key_private' and "
            "'host_key_public', so that the host key can be pinned before the first connection",
            parameter=missing,
        )
    public = validate_public_key(public, "host_key_public")
    key_type = _HOST_KEY_TYPES.get(public.split()[0])
    if key_type is None:
        raise UserInputError(
            "host keys of type %r cannot be injected by cloud-init" % public.split()[0],
            hint="Use an ed25519 (recommended), ecdsa or rsa host key",
            parameter="host_key_public",
        )
    text = private.strip()
    if "-----BEGIN " not in text or "PRIVATE KEY-----" not in text:
        raise UserInputError(
            "the value is not a PEM/OpenSSH private key",
            hint="Give the content of the private key file written by ssh-keygen",
            parameter="host_key_private",
        )
    return key_type, text + "\n", public


def validate_max_price(value: Optional[str]) -> Optional[str]:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    try:
        price = float(text)
    except ValueError:
        price = -1.0
    if not (price > 0 and math.isfinite(price)):
        raise UserInputError(
            "%r is not a positive price" % text,
            hint="Give USD per hour as a decimal string such as '0.25', or leave it empty for the on-demand price",
            parameter="max_price",
        )
    return text


def instance_type_list(types: Optional[List[str]], architecture: str) -> List[str]:
    result: List[str] = []
    for t in types or DEFAULT_INSTANCE_TYPES[architecture]:
        t = str(t).strip()
        if not t:
            continue
        if t not in result:
            result.append(t)
    if not result:
        raise UserInputError("the list is empty", hint="Give at least one instance type", parameter="instance_types")
    return result


def order_candidates(instance_types: List[str], subnets: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Instance types in the given order, each over the subnets sorted by zone.

    ``subnets``: dicts with ``SubnetId`` and ``AvailabilityZone``. The candidate list keeps
    the user's preference: first type in every zone, then the next type.
    """
    ordered = sorted(subnets, key=lambda s: (s["AvailabilityZone"], s["SubnetId"]))
    candidates = []
    priority = 0
    for instance_type in instance_types:
        for subnet in ordered:
            candidates.append(
                {
                    "instance_type": instance_type,
                    "subnet_id": subnet["SubnetId"],
                    "availability_zone": subnet["AvailabilityZone"],
                    "priority": priority,
                }
            )
            priority += 1
    return candidates


def price_for(
    instance_type: str, max_price: Optional[str], overrides: Mapping[str, Any]
) -> Tuple[Optional[str], Optional[float], str]:
    """``(MaxPrice to send or None, price upper bound to report, its source)``.

    Without ``max_price`` nothing is sent unless the user gave the type's on-demand price:
    EC2's default max price is the on-demand price of the type *in the region*, which a
    us-east-1 table cannot know.
    """
    if max_price is not None:
        return max_price, float(max_price), "max_price"
    if instance_type in overrides:
        price = float(overrides[instance_type])
        return _price_str(price), price, "on_demand_prices"
    if instance_type in ON_DEMAND_PRICES:
        return None, ON_DEMAND_PRICES[instance_type], "table"
    return None, None, "unknown"


def validate_price_overrides(overrides: Optional[Mapping[str, Any]]) -> Dict[str, float]:
    result = {}
    for key, value in (overrides or {}).items():
        try:
            price = float(value)
        except (TypeError, ValueError):
            price = -1.0
        if not price > 0:
            raise UserInputError(
                "the price of %r is not a positive number" % key,
                hint="Give USD per hour, for example {'c7g.2xlarge': 0.289}",
                parameter="on_demand_prices",
            )
        result[str(key)] = price
    return result


def _price_str(price: float) -> str:
    return ("%.6f" % price).rstrip("0").rstrip(".")


class _LiteralDumper(yaml.SafeDumper if HAS_YAML else object):  # type: ignore[misc]
    """Multi-line strings (keys, scripts) as ``|`` blocks: readable and exact."""


def _str_representer(dumper: Any, data: str) -> Any:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


if HAS_YAML:
    _LiteralDumper.add_representer(str, _str_representer)


def poweroff_commands(expires_at_epoch: int, expires_at_calendar: str) -> List[Any]:
    """bootcmd entries: power off now if already expired, else at the expiry."""
    return [
        ["sh", "-c", '[ "$(date -u +%%s)" -lt %d ] || systemctl poweroff' % expires_at_epoch],
        [
            "systemd-run",
            "--unit=nixforge-expiry",
            "--on-calendar=%s" % expires_at_calendar,
            "--timer-property=AccuracySec=1s",
            "systemctl",
            "poweroff",
        ],
    ]


def render_user_data(
    build: BuildIdentity,
    host_key_type: str,
    host_key_private: str,
    host_key_public: str,
    authorized_keys: List[str],
    extra: Optional[str] = None,
) -> str:
    """The ``#cloud-config`` document (merged with, or followed by, the user's user data)."""
    expiry = build.expires_at
    config: Dict[str, Any] = {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {
            "%s_private" % host_key_type: host_key_private,
            "%s_public" % host_key_type: host_key_public,
        },
        "ssh_pwauth": False,
        "bootcmd": poweroff_commands(int(expiry.timestamp()), expiry.strftime("%Y-%m-%d %H:%M:%S UTC")),
    }
    if authorized_keys:
        config["ssh_authorized_keys"] = list(authorized_keys)
    script: Optional[str] = None
    if extra and extra.strip():
        if extra.lstrip().startswith("#cloud-config"):
            config = merge_cloud_config(config, extra)
        else:
            script = extra
    document = "#cloud-config\n" + yaml.dump(config, Dumper=_LiteralDumper, default_flow_style=False, sort_keys=True)
    if script is None:
        return document
    multipart = MIMEMultipart()
    multipart.attach(MIMEText(document, "cloud-config"))
    subtype = "x-shellscript" if script.startswith("#!") else "plain"
    multipart.attach(MIMEText(script, subtype))
    return multipart.as_string()


def merge_cloud_config(ours: Dict[str, Any], theirs_text: str) -> Dict[str, Any]:
    try:
        theirs = yaml.safe_load(theirs_text) or {}
    except yaml.YAMLError as exc:
        raise UserInputError(
            "the #cloud-config document is not valid YAML (%s)" % str(exc).splitlines()[0],
            hint="Fix the YAML, or give a shell script instead",
            parameter="user_data",
        ) from None
    if not isinstance(theirs, dict):
        raise UserInputError(
            "the #cloud-config document is not a mapping",
            hint="Write it as 'key: value' lines after '#cloud-config'",
            parameter="user_data",
        )
    merged = dict(ours)
    for key, value in theirs.items():
        if key in _PROTECTED_KEYS:
            raise UserInputError(
                "it sets %r, which the module manages" % key,
                hint="Give the host key through 'host_key_private' and 'host_key_public' instead",
                parameter="user_data",
            )
        if key in _MERGED_LIST_KEYS and not isinstance(value, list):
            raise UserInputError("%r must be a list" % key, hint="Write it as a YAML list", parameter="user_data")
        if key in _MERGED_LIST_KEYS and key in merged:
            merged[key] = list(merged[key]) + value
        else:
            merged[key] = value
    return merged


def encode_user_data(text: str) -> str:
    data = text.encode("utf-8")
    if len(data) > USER_DATA_LIMIT:
        raise UserInputError(
            "the user data is %d bytes, more than EC2's limit of %d" % (len(data), USER_DATA_LIMIT),
            hint="Shorten 'user_data' (download large files from the instance instead)",
            parameter="user_data",
        )
    return base64.b64encode(data).decode("ascii")


def fleet_errors(reply: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The ``Errors[]`` of a create_fleet reply as flat dicts."""
    result = []
    for error in reply.get("Errors") or []:
        overrides = (error.get("LaunchTemplateAndOverrides") or {}).get("Overrides") or {}
        result.append(
            {
                "instance_type": overrides.get("InstanceType"),
                "subnet_id": overrides.get("SubnetId"),
                "availability_zone": overrides.get("AvailabilityZone"),
                "lifecycle": error.get("Lifecycle"),
                "code": error.get("ErrorCode"),
                "message": error.get("ErrorMessage"),
            }
        )
    return result


def drop_failed(
    candidates: List[Dict[str, Any]], errors: List[Dict[str, Any]]
) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Remove the candidates that had a capacity error; return ``(remaining, other errors)``.

    An error that does not say which override failed is charged to the first candidate
    (what an API that answers by raising was trying), so the loop always makes progress.
    """
    remaining = list(candidates)
    others = []
    for error in errors:
        if error.get("code") not in CAPACITY_ERROR_CODES:
            others.append(error)
            continue
        matched = [
            c
            for c in remaining
            if (error.get("instance_type") in (None, c["instance_type"]))
            and (error.get("subnet_id") in (None, c["subnet_id"]))
            and (error.get("availability_zone") in (None, c["availability_zone"]))
        ]
        if error.get("instance_type") is None and error.get("subnet_id") is None:
            matched = remaining[:1]
        remaining = [c for c in remaining if c not in matched]
    return remaining, others


# -- the module ----------------------------------------------------------------------------


class Ec2SpotHost(NixforgeModule):
    provider_argument_spec = ec2_argument_spec()
    required_libraries = [*REQUIRED_LIBRARIES, ("PyYAML", HAS_YAML, YAML_IMPORT_ERROR)]
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
        allocation_strategy=dict(
            type="str",
            choices=[
                "price-capacity-optimized",
                "capacity-optimized",
                "capacity-optimized-prioritized",
                "lowest-price",
                "diversified",
            ],
            default="price-capacity-optimized",
        ),
        max_price=dict(type="str"),
        on_demand_prices=dict(type="dict", default={}),
        volume_size=dict(type="int", default=16, aliases=["root_volume_size"]),
        volume_type=dict(
            type="str",
            choices=["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"],
            default="gp3",
            aliases=["root_volume_type"],
        ),
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

    def __init__(self) -> None:
        super().__init__()
        self._client: Optional[AwsClient] = None
        self.build_id = self.identity.build_id

    @property
    def identity(self) -> BuildIdentity:
        if self.build is None:  # pragma: no cover - build_id is required
            raise RuntimeError("no build identity")
        return self.build

    @property
    def client(self) -> AwsClient:
        if self._client is None:
            self._client = ec2_client(self.params)
        return self._client

    # -- entry ---------------------------------------------------------------------------

    def run(self) -> None:
        self.result["build"] = self.identity.as_dict()
        if self.params["state"] == "present":
            self.present()
        else:
            self.absent()

    # -- present -------------------------------------------------------------------------

    def present(self) -> None:
        build = self.identity
        p = self.params
        # Everything that needs no API call first.
        host_key_type, host_private, host_public = validate_host_keys(p["host_key_private"], p["host_key_public"])
        public_key = validate_public_key(p["public_key"], "public_key") if p["public_key"] else None
        if not public_key and not p["key_name"]:
            raise UserInputError(
                "no SSH key to log in with",
                hint="Set 'public_key' (the per-build public key generated on the controller) or 'key_name' "
                "(an existing key pair)",
                parameter="public_key",
            )
        max_price = validate_max_price(p["max_price"])
        price_overrides = validate_price_overrides(p["on_demand_prices"])
        if p["volume_size"] < 1 or p["volume_size"] > 16384:
            raise UserInputError(
                "%d GiB is out of range" % p["volume_size"], hint="Use 1 to 16384", parameter="volume_size"
            )
        if p["wait_timeout"] < 0:
            raise UserInputError("it is negative", hint="Give seconds, for example 600", parameter="wait_timeout")
        if p["instance_types"] is not None:
            instance_type_list(p["instance_types"], p["architecture"])  # fail early on an empty list
        cidrs = self.resolve_ssh_cidrs(p["ssh_cidr"])
        if is_wide_open(cidrs):
            self.warn("ssh_cidr opens SSH to the whole Internet; give the controller's address instead")
        name = p["instance_name"] or build.user_tags.get("Name") or "nixforge-%s" % build.build_id
        tags = build.tags({"Name": name})
        self.result.update(
            ssh_port=SSH_PORT, ssh_user=p["ssh_user"], host_public_key=host_public, tags=tags, candidate_errors=[]
        )

        existing = self.find_instances(LIVE_STATES)
        if existing:
            self.adopt(existing)
            return
        build.require_future_expiry()

        image = self.find_image()
        instance_types = instance_type_list(p["instance_types"], image.get("Architecture") or p["architecture"])
        self.check_instance_types(instance_types, image.get("Architecture") or p["architecture"])
        subnets = self.find_subnets()
        candidates = self.offered(order_candidates(instance_types, subnets))
        vpc_id = subnets[0]["VpcId"]
        self.result.update(image_id=image["ImageId"], image_name=image.get("Name"), adopted=False)

        user_data = encode_user_data(
            render_user_data(
                build, host_key_type, host_private, host_public, [public_key] if public_key else [], p["user_data"]
            )
        )
        key_name = p["key_name"] or "nixforge-%s" % build.build_id
        self.result["key_name"] = key_name
        if p["key_name"]:
            self.check_key_pair_exists(p["key_name"])

        planned = []
        if public_key:
            planned.append("import key pair %s" % key_name)
        planned += [
            "create security group %s allowing SSH from %s" % (build.resource_name("ssh"), ", ".join(cidrs)),
            "create launch template %s (%s, %d GiB %s)"
            % (build.resource_name("lt"), image["ImageId"], p["volume_size"], p["volume_type"]),
            "launch an instant fleet over %d candidate(s): %s"
            % (len(candidates), ", ".join(sorted(set(c["instance_type"] for c in candidates)))),
        ]
        if self.check_mode:
            for action in planned:
                self.would_change(action)
            return

        try:
            if public_key:
                self.would_change(planned[0])
                self.import_key_pair(key_name, public_key, tags)
            sg_id = self.ensure_security_group(vpc_id, cidrs, tags)
            lt_id = self.create_launch_template(image, key_name, sg_id, user_data, tags)
            self.launch(candidates, lt_id, sg_id, max_price, price_overrides, tags)
        except NixforgeError as exc:
            self.cleanup_after_failure(exc)
            raise
        except BaseException as exc:
            self.cleanup_after_failure(exc)
            raise

    def resolve_ssh_cidrs(self, values: Optional[List[str]]) -> List[str]:
        values = list(values or [])
        if any(str(v).strip().lower() == "auto" for v in values):
            address = self.detect_public_address()
            values = [v for v in values if str(v).strip().lower() != "auto"] + ["%s/32" % address]
        return parse_ssh_cidrs(values)

    def detect_public_address(self) -> str:
        url = self.params["ssh_cidr_lookup_url"]
        try:
            response = open_url(url, timeout=10, validate_certs=True)
            text = response.read(64).decode("ascii", "replace").strip()
            address = ipaddress.ip_address(text)
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot detect"
            raise UserInputError(
                "could not find the controller's public address from %s (%s)" % (url, exc),
                hint="Set 'ssh_cidr' to the controller's address explicitly, for example '203.0.113.7/32'",
                parameter="ssh_cidr",
            ) from None
        if address.version != 4:
            raise UserInputError(
                "%s answered %s, not an IPv4 address" % (url, address),
                hint="Set 'ssh_cidr' explicitly",
                parameter="ssh_cidr",
            )
        return str(address)

    # lookups (read-only; also run in check mode) ----------------------------------------

    def find_instances(self, states: List[str]) -> List[Dict[str, Any]]:
        reservations = self.client.paginate(
            "describe_instances",
            "Reservations",
            what="Looking up the instances of build %s" % self.build_id,
            Filters=filters({"tag:" + TAG_BUILD_ID: self.build_id, "instance-state-name": states}),
        )
        instances = [i for r in reservations for i in r.get("Instances", [])]
        return sorted(instances, key=lambda i: str(i.get("LaunchTime", "")))

    def find_image(self) -> Dict[str, Any]:
        p = self.params
        if p["image_id"]:
            images = self.client.call(
                "describe_images", what="Looking up the AMI", parameter="image_id", ImageIds=[p["image_id"]]
            ).get("Images", [])
            if not images:
                raise UserInputError(
                    "AMI %s does not exist in %s" % (p["image_id"], p["region"]),
                    hint="Check the id and the region, or leave 'image_id' unset for the Debian default",
                    parameter="image_id",
                )
            return images[0]
        name = p["image_name"] or "debian-%s-%s-*" % (p["debian_release"], DEBIAN_ARCH[p["architecture"]])
        images = self.client.paginate(
            "describe_images",
            "Images",
            what="Looking up the AMI",
            parameter="image_name",
            Owners=[p["image_owner"]],
            Filters=filters({"name": name, "architecture": p["architecture"], "state": "available"}),
        )
        if not images:
            parameter = "image_name" if p["image_name"] else "debian_release"
            raise UserInputError(
                "no available %s AMI named %r from owner %s in %s"
                % (p["architecture"], name, p["image_owner"], p["region"]),
                hint="Check 'debian_release', 'architecture', 'image_name' and 'image_owner', or give 'image_id'",
                parameter=parameter,
            )
        return max(images, key=lambda i: (i.get("CreationDate", ""), i.get("Name", "")))

    def check_instance_types(self, instance_types: List[str], architecture: str) -> None:
        try:
            reply = self.client.call(
                "describe_instance_types", what="Looking up the instance types", InstanceTypes=instance_types
            )
        except NixforgeError as exc:
            if exc.code in ("InvalidInstanceType", "InvalidParameterValue"):
                raise UserInputError(
                    exc.details.get("provider_message") or exc.msg,
                    hint="Use instance types that exist in %s, for example %s"
                    % (self.params["region"], ", ".join(DEFAULT_INSTANCE_TYPES[architecture])),
                    parameter="instance_types",
                ) from None
            raise
        found = {t["InstanceType"]: t for t in reply.get("InstanceTypes", [])}
        unknown = [t for t in instance_types if t not in found]
        if unknown:
            raise UserInputError(
                "unknown instance type(s) %s" % ", ".join(unknown),
                hint="Use instance types that exist in %s" % self.params["region"],
                parameter="instance_types",
            )
        wrong = []
        for t in instance_types:
            arches = (found[t].get("ProcessorInfo") or {}).get("SupportedArchitectures") or []
            if architecture not in arches:
                wrong.append("%s (%s)" % (t, "/".join(arches) or "unknown"))
        if wrong:
            raise UserInputError(
                "the AMI is %s but %s cannot run it" % (architecture, ", ".join(wrong)),
                hint="Choose %s instance types, for example %s, or change 'architecture'"
                % (architecture, ", ".join(DEFAULT_INSTANCE_TYPES.get(architecture, []))),
                parameter="instance_types",
            )

    def offered(self, candidates: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Drop the candidates whose type EC2 does not offer in their zone.

        A type the offerings API says nothing about is kept (EC2 then answers for it).
        """
        types = sorted(set(c["instance_type"] for c in candidates))
        offerings = self.client.paginate(
            "describe_instance_type_offerings",
            "InstanceTypeOfferings",
            what="Looking up where the instance types are offered",
            LocationType="availability-zone",
            Filters=filters({"instance-type": types}),
        )
        zones: Dict[str, set] = {}
        for offering in offerings:
            zones.setdefault(offering["InstanceType"], set()).add(offering["Location"])
        kept = [
            c
            for c in candidates
            if c["instance_type"] not in zones or c["availability_zone"] in zones[c["instance_type"]]
        ]
        if not kept:
            raise UserInputError(
                "none of %s is offered in the zones of the subnets (%s)"
                % (", ".join(types), ", ".join(sorted(set(c["availability_zone"] for c in candidates)))),
                hint="Choose other instance types, or subnets in other availability zones",
                parameter="instance_types",
            )
        for t in types:
            if t in zones and not any(c["instance_type"] == t for c in kept):
                self.warn("%s is not offered in any of the subnets' zones; it is not tried" % t)
        return kept

    def find_subnets(self) -> List[Dict[str, Any]]:
        p = self.params
        if p["subnet_ids"]:
            subnets = self.client.call(
                "describe_subnets", what="Looking up the subnets", parameter="subnet_ids", SubnetIds=p["subnet_ids"]
            ).get("Subnets", [])
            vpcs = sorted(set(s["VpcId"] for s in subnets))
            if len(vpcs) > 1:
                raise UserInputError(
                    "the subnets are in different VPCs (%s)" % ", ".join(vpcs),
                    hint="Give subnets of one VPC; the security group belongs to one VPC",
                    parameter="subnet_ids",
                )
        else:
            subnets = self.client.paginate(
                "describe_subnets",
                "Subnets",
                what="Looking up the default subnets",
                Filters=filters({"default-for-az": "true"}),
            )
            if p["availability_zones"]:
                wanted = set(p["availability_zones"])
                subnets = [s for s in subnets if s["AvailabilityZone"] in wanted]
        if not subnets:
            raise UserInputError(
                "no subnet to launch into in %s%s"
                % (p["region"], " in zones %s" % ", ".join(p["availability_zones"]) if p["availability_zones"] else ""),
                hint="Give 'subnet_ids', or check 'availability_zones' (the default VPC's default subnets are used)",
                parameter="subnet_ids" if p["subnet_ids"] else "availability_zones",
            )
        return subnets

    def check_key_pair_exists(self, name: str) -> None:
        try:
            self.client.call("describe_key_pairs", what="Looking up the key pair", KeyNames=[name])
        except NixforgeError as exc:
            if exc.code == "InvalidKeyPair.NotFound":
                raise UserInputError(
                    "key pair %r does not exist in %s" % (name, self.params["region"]),
                    hint="Create it first, or give 'public_key' to import a per-build key",
                    parameter="key_name",
                ) from None
            raise

    # creation -------------------------------------------------------------------------

    def import_key_pair(self, name: str, public_key: str, tags: Mapping[str, str]) -> None:
        existing = self.client.call(
            "describe_key_pairs", what="Looking up the key pair", Filters=filters({"key-name": name})
        ).get("KeyPairs", [])
        for pair in existing:
            if tag_dict(pair.get("Tags")).get(TAG_BUILD_ID) != self.build_id:
                raise UserInputError(
                    "a key pair named %r exists and does not belong to build %s" % (name, self.build_id),
                    hint="Choose another 'build_id', or delete or rename that key pair",
                    parameter="build_id",
                )
            # ours, from an earlier attempt: replace it (the key may have changed)
            self.client.call("delete_key_pair", what="Replacing the build's key pair", KeyName=name)
        self.client.call(
            "import_key_pair",
            what="Importing the key pair",
            parameter="public_key",
            KeyName=name,
            PublicKeyMaterial=public_key.encode("ascii"),
            TagSpecifications=tag_specifications(["key-pair"], tags),
        )

    def ensure_security_group(self, vpc_id: str, cidrs: List[str], tags: Mapping[str, str]) -> str:
        name = self.identity.resource_name("ssh")
        groups = self.client.call(
            "describe_security_groups",
            what="Looking up the security group",
            Filters=filters({"group-name": name, "vpc-id": vpc_id}),
        ).get("SecurityGroups", [])
        if groups:
            group = groups[0]
            if tag_dict(group.get("Tags")).get(TAG_BUILD_ID) != self.build_id:
                raise UserInputError(
                    "security group %r exists and does not belong to build %s" % (name, self.build_id),
                    hint="Choose another 'build_id', or delete that security group",
                    parameter="build_id",
                )
            self.would_change("update security group %s" % group["GroupId"])
            if group.get("IpPermissions"):
                self.client.call(
                    "revoke_security_group_ingress",
                    what="Resetting the security group's rules",
                    GroupId=group["GroupId"],
                    IpPermissions=group["IpPermissions"],
                )
            group_id = group["GroupId"]
        else:
            self.would_change("create security group %s allowing SSH from %s" % (name, ", ".join(cidrs)))
            group_id = self.client.call(
                "create_security_group",
                what="Creating the security group",
                GroupName=name,
                Description="SSH to the nixforge builder of build %s" % self.build_id,
                VpcId=vpc_id,
                TagSpecifications=tag_specifications(["security-group"], tags),
            )["GroupId"]
        v4 = [{"CidrIp": c, "Description": "controller"} for c in cidrs if ":" not in c]
        v6 = [{"CidrIpv6": c, "Description": "controller"} for c in cidrs if ":" in c]
        permission: Dict[str, Any] = {"IpProtocol": "tcp", "FromPort": SSH_PORT, "ToPort": SSH_PORT}
        if v4:
            permission["IpRanges"] = v4
        if v6:
            permission["Ipv6Ranges"] = v6
        self.client.call(
            "authorize_security_group_ingress",
            what="Allowing SSH in the security group",
            parameter="ssh_cidr",
            GroupId=group_id,
            IpPermissions=[permission],
        )
        self.result["security_group_id"] = group_id
        return group_id

    def create_launch_template(
        self, image: Mapping[str, Any], key_name: str, sg_id: str, user_data: str, tags: Mapping[str, str]
    ) -> str:
        p = self.params
        name = self.identity.resource_name("lt")
        for template in self.client.call(
            "describe_launch_templates",
            what="Looking up the launch template",
            Filters=filters({"launch-template-name": name}),
        ).get("LaunchTemplates", []):
            if tag_dict(template.get("Tags")).get(TAG_BUILD_ID) != self.build_id:
                raise UserInputError(
                    "launch template %r exists and does not belong to build %s" % (name, self.build_id),
                    hint="Choose another 'build_id', or delete that launch template",
                    parameter="build_id",
                )
            self.client.call(
                "delete_launch_template",
                what="Replacing the build's launch template",
                LaunchTemplateId=template["LaunchTemplateId"],
            )
        self.would_change("create launch template %s" % name)
        data = {
            "ImageId": image["ImageId"],
            "KeyName": key_name,
            # Groups on the interface, not SecurityGroupIds: EC2 refuses both together, and the
            # interface is where the public address is asked for (fleet overrides set the subnet).
            "NetworkInterfaces": [
                {
                    "DeviceIndex": 0,
                    "AssociatePublicIpAddress": bool(p["public_ip"]),
                    "Groups": [sg_id],
                    "DeleteOnTermination": True,
                }
            ],
            "UserData": user_data,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "BlockDeviceMappings": [
                {
                    "DeviceName": image.get("RootDeviceName") or "/dev/xvda",
                    "Ebs": {
                        "VolumeSize": p["volume_size"],
                        "VolumeType": p["volume_type"],
                        "DeleteOnTermination": True,
                    },
                }
            ],
            "TagSpecifications": tag_specifications(["instance", "volume", "network-interface"], tags),
        }
        reply = self.client.call(
            "create_launch_template",
            what="Creating the launch template",
            LaunchTemplateName=name,
            LaunchTemplateData=data,
            TagSpecifications=tag_specifications(["launch-template"], tags),
        )
        template_id = reply["LaunchTemplate"]["LaunchTemplateId"]
        self.result["launch_template_id"] = template_id
        return template_id

    def launch(
        self,
        candidates: List[Dict[str, Any]],
        lt_id: str,
        sg_id: str,
        max_price: Optional[str],
        price_overrides: Mapping[str, float],
        tags: Mapping[str, str],
    ) -> None:
        p = self.params
        markets = ["spot"] if p["market"] == "spot" else ["on-demand"]
        if p["market"] == "spot" and p["on_demand_fallback"]:
            markets.append("on-demand")
        launched = None
        for market in markets:
            launched = self.launch_in_market(market, candidates, lt_id, max_price, price_overrides, tags)
            if launched:
                break
            if market == "spot" and len(markets) > 1:
                self.warn("no spot capacity in any candidate; falling back to on-demand")
        if not launched:
            tried = ", ".join(
                "%s in %s (%s)" % (e["instance_type"], e["availability_zone"] or e["subnet_id"], e["code"])
                for e in self.result["candidate_errors"]
            )
            raise ProviderError(
                "no capacity for any candidate: %s" % (tried or "the fleet launched nothing"),
                hint="Add instance types ('instance_types') or zones ('subnet_ids' / 'availability_zones'), "
                "raise 'max_price', set 'on_demand_fallback: true', or try again later",
                what="Launching the builder",
                code="InsufficientInstanceCapacity",
            )
        fleet_id, instance_id, lifecycle, candidate = launched
        self.result.update(fleet_id=fleet_id, instance_id=instance_id, lifecycle=lifecycle)
        _send, bound, source = price_for(candidate["instance_type"], max_price, price_overrides)
        if lifecycle == "on-demand":
            bound = price_overrides.get(candidate["instance_type"], ON_DEMAND_PRICES.get(candidate["instance_type"]))
            source = "on_demand_prices" if candidate["instance_type"] in price_overrides else "table"
            if bound is None:
                source = "unknown"
        self.result.update(max_price=bound, max_price_source=source)
        instance = self.wait_until_ready(instance_id)
        self.enforce_safety(instance, sg_id)
        self.describe_result(instance)
        self.result["spot_price"] = self.current_spot_price(instance) if lifecycle == "spot" else None

    def launch_in_market(
        self,
        market: str,
        candidates: List[Dict[str, Any]],
        lt_id: str,
        max_price: Optional[str],
        price_overrides: Mapping[str, float],
        tags: Mapping[str, str],
    ) -> Optional[Tuple[str, str, str, Dict[str, Any]]]:
        remaining = list(candidates)
        attempts = 0
        while remaining and attempts <= len(candidates):
            attempts += 1
            overrides = []
            for c in remaining:
                override: Dict[str, Any] = {"InstanceType": c["instance_type"], "SubnetId": c["subnet_id"]}
                if market == "spot":
                    send, _bound, _source = price_for(c["instance_type"], max_price, price_overrides)
                    if send is not None:
                        override["MaxPrice"] = send
                    if self.params["allocation_strategy"] == "capacity-optimized-prioritized":
                        override["Priority"] = float(c["priority"])
                else:
                    override["Priority"] = float(c["priority"])
                overrides.append(override)
            request: Dict[str, Any] = {
                "Type": "instant",
                "LaunchTemplateConfigs": [
                    {
                        "LaunchTemplateSpecification": {"LaunchTemplateId": lt_id, "Version": "$Latest"},
                        "Overrides": overrides,
                    }
                ],
                "TargetCapacitySpecification": {"TotalTargetCapacity": 1, "DefaultTargetCapacityType": market},
                "TagSpecifications": tag_specifications(["fleet"], tags),
            }
            if market == "spot":
                request["SpotOptions"] = {"AllocationStrategy": self.params["allocation_strategy"]}
            else:
                request["OnDemandOptions"] = {"AllocationStrategy": "prioritized"}
            self.would_change("launch an instant %s fleet over %d candidate(s)" % (market, len(remaining)))
            try:
                reply = self.client.call("create_fleet", what="Launching the instant fleet", **request)
            except NixforgeError as exc:
                if exc.code not in CAPACITY_ERROR_CODES:
                    raise
                # an API that answers a capacity fault by raising tried the first candidate
                errors = [
                    {
                        "instance_type": remaining[0]["instance_type"],
                        "subnet_id": remaining[0]["subnet_id"],
                        "availability_zone": remaining[0]["availability_zone"],
                        "lifecycle": market,
                        "code": exc.code,
                        "message": exc.details.get("provider_message") or exc.msg,
                    }
                ]
                reply = {}
            else:
                errors = fleet_errors(reply)
            for e in errors:
                e["lifecycle"] = e.get("lifecycle") or market
                if not e.get("availability_zone") and e.get("subnet_id"):
                    e["availability_zone"] = next(
                        (c["availability_zone"] for c in candidates if c["subnet_id"] == e["subnet_id"]), None
                    )
            fleet_id = reply.get("FleetId")
            if fleet_id:
                self.result.setdefault("fleet_ids", []).append(fleet_id)
            for group in reply.get("Instances") or []:
                if group.get("InstanceIds"):
                    chosen = (group.get("LaunchTemplateAndOverrides") or {}).get("Overrides") or {}
                    candidate = next(
                        (
                            c
                            for c in remaining
                            if c["instance_type"] == (chosen.get("InstanceType") or group.get("InstanceType"))
                            and (not chosen.get("SubnetId") or c["subnet_id"] == chosen.get("SubnetId"))
                        ),
                        remaining[0],
                    )
                    self.result["candidate_errors"].extend(e for e in errors if e.get("code") in CAPACITY_ERROR_CODES)
                    return fleet_id or "", group["InstanceIds"][0], group.get("Lifecycle") or market, candidate
            remaining, others = drop_failed(remaining, errors)
            self.result["candidate_errors"].extend(e for e in errors if e not in others)
            if others:
                first = others[0]
                raise ProviderError(
                    "%s: %s" % (first.get("code"), first.get("message")),
                    hint="Check the instance types, subnets and AMI; the fleet's error is not about capacity",
                    what="Launching the instant fleet",
                    code=first.get("code"),
                )
            if not errors:
                # nothing launched and nothing said why: do not loop on the same request
                return None
        return None

    # waiting --------------------------------------------------------------------------

    def wait_until_ready(self, instance_id: str) -> Dict[str, Any]:
        deadline = time.monotonic() + self.params["wait_timeout"]
        if not self.params["wait"]:
            return self.describe_instance(instance_id) or {"InstanceId": instance_id}

        def probe_running() -> Dict[str, Any]:
            instance = self.describe_instance(instance_id) or {"State": {"Name": "unknown"}}
            state = instance.get("State", {}).get("Name")
            if state in ("shutting-down", "terminated", "stopping", "stopped"):
                reason = (instance.get("StateReason") or {}).get("Message") or "no reason given"
                raise ProviderError(
                    "instance %s went to %s while starting (%s)" % (instance_id, state, reason),
                    hint="Spot capacity may have been reclaimed; run again (other candidates are tried)",
                    what="Starting the builder",
                )
            return instance

        instance = wait_for(
            probe_running,
            timeout=self.params["wait_timeout"],
            what="instance %s to be running with a %s address" % (instance_id, self.address_kind),
            done=lambda i: i.get("State", {}).get("Name") == "running" and bool(self.address_of(i)),
            describe=lambda i: (
                "%s, %s address %s"
                % (i.get("State", {}).get("Name"), self.address_kind, self.address_of(i) or "none yet")
            ),
            interval=1.0,
            max_interval=10.0,
        )
        address = self.address_of(instance)
        wait_for(
            lambda: ssh_banner(address),
            timeout=max(0.0, deadline - time.monotonic()),
            option_value=self.params["wait_timeout"],
            what="SSH on %s:%d (instance %s)" % (address, SSH_PORT, instance_id),
            done=lambda state: state.startswith("SSH-"),
            interval=1.0,
            max_interval=5.0,
            hint="Check that 'ssh_cidr' contains the controller's address as the instance sees it",
        )
        return instance

    @property
    def address_kind(self) -> str:
        return "public" if self.params["public_ip"] else "private"

    def address_of(self, instance: Mapping[str, Any]) -> Optional[str]:
        if self.params["public_ip"]:
            return instance.get("PublicIpAddress")
        return instance.get("PrivateIpAddress")

    def describe_instance(self, instance_id: str) -> Optional[Dict[str, Any]]:
        reply = self.client.call(
            "describe_instances",
            what="Describing instance %s" % instance_id,
            ignore_codes=["InvalidInstanceID.NotFound"],  # eventual consistency right after launch
            InstanceIds=[instance_id],
        )
        if reply is None:
            return None
        for reservation in reply.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                return instance
        return None

    def enforce_safety(self, instance: Dict[str, Any], sg_id: str) -> None:
        """Make sure the instance terminates on shutdown and sits in the SSH-only group.

        The launch template asks for both; this verifies it on the instance, because an
        EC2-compatible API that drops either leaves a machine that outlives its build or
        is reachable from elsewhere.
        """
        instance_id = instance["InstanceId"]
        behaviour = self.client.call(
            "describe_instance_attribute",
            what="Checking the shutdown behaviour",
            InstanceId=instance_id,
            Attribute="instanceInitiatedShutdownBehavior",
        ).get("InstanceInitiatedShutdownBehavior", {})
        if behaviour.get("Value") != "terminate":
            self.client.call(
                "modify_instance_attribute",
                what="Setting the shutdown behaviour to terminate",
                InstanceId=instance_id,
                InstanceInitiatedShutdownBehavior={"Value": "terminate"},
            )
        groups = [g.get("GroupId") for g in instance.get("SecurityGroups") or []]
        if groups != [sg_id]:
            self.client.call(
                "modify_instance_attribute",
                what="Putting the instance in the SSH-only security group",
                InstanceId=instance_id,
                Groups=[sg_id],
            )

    def describe_result(self, instance: Mapping[str, Any]) -> None:
        placement = instance.get("Placement") or {}
        launch_time = instance.get("LaunchTime")
        self.result.update(
            instance_id=instance.get("InstanceId"),
            instance_type=instance.get("InstanceType"),
            availability_zone=placement.get("AvailabilityZone"),
            subnet_id=instance.get("SubnetId"),
            lifecycle=instance.get("InstanceLifecycle") or "on-demand",
            public_ip=instance.get("PublicIpAddress"),
            private_ip=instance.get("PrivateIpAddress"),
            ssh_host=self.address_of(instance) or _address(instance),
            image_id=instance.get("ImageId", self.result.get("image_id")),
            key_name=instance.get("KeyName", self.result.get("key_name")),
            launched_at=format_timestamp(launch_time) if isinstance(launch_time, datetime.datetime) else None,
        )

    def current_spot_price(self, instance: Mapping[str, Any]) -> Optional[float]:
        zone = (instance.get("Placement") or {}).get("AvailabilityZone")
        try:
            history = self.client.call(
                "describe_spot_price_history",
                what="Reading the spot price",
                InstanceTypes=[instance.get("InstanceType")],
                AvailabilityZone=zone,
                MaxResults=20,
            ).get("SpotPriceHistory", [])
        except NixforgeError as exc:
            self.warn("could not read the spot price: %s" % exc)
            return None
        linux = [h for h in history if str(h.get("ProductDescription", "")).startswith("Linux/UNIX")]
        linux = [h for h in linux if h.get("AvailabilityZone") in (None, zone)]
        if not linux:
            return None
        latest = max(linux, key=lambda h: str(h.get("Timestamp", "")))
        try:
            return float(latest["SpotPrice"])
        except (KeyError, TypeError, ValueError):
            return None

    # adoption -------------------------------------------------------------------------

    def adopt(self, instances: List[Dict[str, Any]]) -> None:
        instance = instances[-1]
        if len(instances) > 1:
            self.warn(
                "build %s has %d live instances (%s); adopting the newest, %s. Run with state=absent to clean up."
                % (self.build_id, len(instances), ", ".join(i["InstanceId"] for i in instances), instance["InstanceId"])
            )
        tags = tag_dict(instance.get("Tags"))
        self.result["build"] = {
            "build_id": self.build_id,
            "pipeline": tags.get(TAG_PIPELINE, self.result["build"]["pipeline"]),
            "expires_at": tags.get(TAG_EXPIRES_AT, self.result["build"]["expires_at"]),
        }
        self.result["tags"] = tags
        self.result["adopted"] = True
        groups = [g.get("GroupId") for g in instance.get("SecurityGroups") or []]
        self.result["security_group_id"] = groups[0] if groups else None
        for key, value in (("launch_template_id", "aws:ec2launchtemplate:id"), ("fleet_id", "aws:ec2:fleet-id")):
            if tags.get(value):
                self.result[key] = tags[value]
        if not self.check_mode:
            instance = self.wait_until_ready(instance["InstanceId"])
        self.describe_result(instance)
        self.result["image_name"] = None
        lifecycle = instance.get("InstanceLifecycle") or "on-demand"
        instance_type = str(instance.get("InstanceType"))
        bound = self.params["on_demand_prices"].get(instance_type) or ON_DEMAND_PRICES.get(instance_type)
        self.result.update(
            max_price=float(self.params["max_price"]) if self.params["max_price"] and lifecycle == "spot" else bound,
            max_price_source="max_price"
            if self.params["max_price"] and lifecycle == "spot"
            else ("table" if bound else "unknown"),
            spot_price=self.current_spot_price(instance) if lifecycle == "spot" else None,
        )

    # absent ---------------------------------------------------------------------------

    def absent(self) -> None:
        self.result["build"] = {"build_id": self.build_id}
        removed = self.remove_build()
        self.result["removed"] = removed

    def build_resources(self) -> Dict[str, List[Any]]:
        """Every resource of the build, found by its tag."""
        tag_filter = {"tag:" + TAG_BUILD_ID: self.build_id}
        instances = self.find_instances(NOT_TERMINATED_STATES)
        fleets = [
            f
            for f in self.client.paginate("describe_fleets", "Fleets", what="Looking up the build's fleets")
            if tag_dict(f.get("Tags")).get(TAG_BUILD_ID) == self.build_id
            and not str(f.get("FleetState", "")).startswith("deleted")
        ]
        templates = self.client.paginate(
            "describe_launch_templates",
            "LaunchTemplates",
            what="Looking up the launch templates",
            Filters=filters(tag_filter),
        )
        groups = self.client.paginate(
            "describe_security_groups",
            "SecurityGroups",
            what="Looking up the security groups",
            Filters=filters(tag_filter),
        )
        pairs = self.client.call(
            "describe_key_pairs", what="Looking up the key pairs", Filters=filters(tag_filter)
        ).get("KeyPairs", [])
        volumes = self.client.paginate(
            "describe_volumes", "Volumes", what="Looking up the volumes", Filters=filters(tag_filter)
        )
        return {
            "instances": instances,
            "fleets": fleets,
            "launch_templates": templates,
            "security_groups": groups,
            "key_pairs": pairs,
            "volumes": volumes,
        }

    def remove_build(self) -> Dict[str, List[str]]:
        found = self.build_resources()
        removed: Dict[str, List[str]] = {
            "instances": [i["InstanceId"] for i in found["instances"]],
            "fleets": [f["FleetId"] for f in found["fleets"]],
            "launch_templates": [t["LaunchTemplateId"] for t in found["launch_templates"]],
            "security_groups": [g["GroupId"] for g in found["security_groups"]],
            "key_pairs": [k["KeyName"] for k in found["key_pairs"]],
            "volumes": [v["VolumeId"] for v in found["volumes"]],
        }
        for kind, ids in removed.items():
            for resource_id in ids:
                self.would_change("remove %s %s" % (kind[:-1].replace("_", " "), resource_id))
        if self.check_mode or not any(removed.values()):
            return removed

        for fleet_id in removed["fleets"]:
            self.delete_fleet(fleet_id)
        if removed["instances"]:
            self.client.call(
                "terminate_instances", what="Terminating the build's instances", InstanceIds=removed["instances"]
            )
            if self.params["wait"]:
                wait_for(
                    lambda: self.find_instances(NOT_TERMINATED_STATES),
                    timeout=self.params["wait_timeout"],
                    what="the instances of build %s to terminate" % self.build_id,
                    done=lambda left: not left,
                    describe=lambda left: ", ".join(
                        "%s %s" % (i["InstanceId"], i.get("State", {}).get("Name")) for i in left
                    ),
                )
        for template_id in removed["launch_templates"]:
            self.client.call(
                "delete_launch_template",
                what="Deleting launch template %s" % template_id,
                ignore_codes=["InvalidLaunchTemplateId.NotFound", "InvalidLaunchTemplateName.NotFoundException"],
                LaunchTemplateId=template_id,
            )
        for key_name in removed["key_pairs"]:
            self.client.call(
                "delete_key_pair",
                what="Deleting key pair %s" % key_name,
                ignore_codes=["InvalidKeyPair.NotFound"],
                KeyName=key_name,
            )
        for group_id in removed["security_groups"]:
            self.delete_security_group(group_id)
        self.delete_volumes(removed["volumes"])
        return removed

    def delete_fleet(self, fleet_id: str) -> None:
        try:
            reply = self.client.call(
                "delete_fleets",
                what="Deleting fleet %s" % fleet_id,
                ignore_codes=["InvalidFleetId.NotFound", "FleetNotFound"],
                FleetIds=[fleet_id],
                TerminateInstances=True,
            )
        except NixforgeError as exc:
            # The fleet's instances are gone already: some EC2 implementations then refuse
            # TerminateInstances=true; deleting the bare fleet is what is left to do.
            if exc.code not in ("InvalidParameterCombination", "IncorrectState"):
                raise
            reply = self.client.call(
                "delete_fleets", what="Deleting fleet %s" % fleet_id, FleetIds=[fleet_id], TerminateInstances=False
            )
        if reply is None:
            return
        for failure in reply.get("UnsuccessfulFleetDeletions") or []:
            error = failure.get("Error") or {}
            if error.get("Code") not in ("fleetIdDoesNotExist", "fleetIdNotInDeletableState"):
                raise ProviderError(
                    "%s: %s" % (error.get("Code"), error.get("Message")),
                    hint="Delete it in the EC2 console if it persists",
                    what="Deleting fleet %s" % fleet_id,
                )

    def delete_security_group(self, group_id: str) -> None:
        client = self.client

        def attempt() -> str:
            try:
                client.call(
                    "delete_security_group",
                    what="Deleting security group %s" % group_id,
                    ignore_codes=["InvalidGroup.NotFound"],
                    GroupId=group_id,
                )
            except NixforgeError as exc:
                if exc.code == "DependencyViolation":
                    return "still in use (%s)" % (exc.details.get("provider_message") or exc.msg)
                raise
            return "deleted"

        wait_for(
            attempt,
            timeout=max(60, self.params["wait_timeout"]),
            what="security group %s to be deletable (its network interfaces to go)" % group_id,
            done=lambda state: state == "deleted",
            interval=2.0,
            max_interval=10.0,
        )

    def delete_volumes(self, volume_ids: List[str]) -> None:
        for volume_id in volume_ids:
            state = self._volume_state(volume_id)
            if state not in ("gone", "available", "deleting"):
                # attached to an instance that is terminating: it goes with it
                # (DeleteOnTermination), or becomes available and is deleted below
                state = wait_for(
                    functools.partial(self._volume_state, volume_id),
                    timeout=max(60, self.params["wait_timeout"]),
                    what="volume %s to be released" % volume_id,
                    done=lambda state: state in ("gone", "available", "deleting"),
                )
            if state == "available":
                self.client.call(
                    "delete_volume",
                    what="Deleting volume %s" % volume_id,
                    ignore_codes=["InvalidVolume.NotFound"],
                    VolumeId=volume_id,
                )

    def _volume_state(self, volume_id: str) -> str:
        reply = self.client.call(
            "describe_volumes",
            what="Describing volume %s" % volume_id,
            ignore_codes=["InvalidVolume.NotFound"],
            VolumeIds=[volume_id],
        )
        volumes = (reply or {}).get("Volumes") or []
        return str(volumes[0].get("State")) if volumes else "gone"

    def cleanup_after_failure(self, exc: BaseException) -> None:
        if not self.params["cleanup_on_failure"] or self._client is None:
            return
        try:
            removed = self.remove_build()
        except Exception as cleanup_exc:  # noqa: BLE001 - report both problems
            self.result["cleanup_error"] = self.redact(str(cleanup_exc))
            if isinstance(exc, NixforgeError):
                exc.msg = "%s; removing what was created also failed: %s (run again with state=absent)" % (
                    exc.msg.rstrip("."),
                    cleanup_exc,
                )
            return
        self.result["removed"] = removed
        if isinstance(exc, NixforgeError):
            exc.hint = ((exc.hint or "").rstrip(".") + ". " if exc.hint else "") + (
                "Everything this build had created was removed again"
            )


def _address(instance: Mapping[str, Any]) -> Optional[str]:
    return instance.get("PublicIpAddress") or instance.get("PrivateIpAddress")


def ssh_banner(address: Optional[str], port: int = SSH_PORT, timeout: float = 5.0) -> str:
    """``SSH-2.0-...`` when an SSH server answers on ``address:port``, else what happened."""
    if not address:
        return "no address"
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except socket.timeout:
        return "no answer on port %d (timeout)" % port
    except OSError as exc:
        return "port %d: %s" % (port, exc.strerror or exc)
    line = data.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    return line if line.startswith("SSH-") else "port %d answered without an SSH banner" % port


def main() -> None:
    Ec2SpotHost().execute()


if __name__ == "__main__":
    main()
