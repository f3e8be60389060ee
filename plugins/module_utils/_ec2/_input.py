# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: EC2 input checks and user data; no stable interface.
"""Input that needs no API call (SSH networks) and the instance's user data."""

from __future__ import annotations

import base64
import ipaddress
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional

from ansible.module_utils.urls import open_url
from ansible_collections.nixforge.images.plugins.module_utils._base import _userdata
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import BuildIdentity
from ansible_collections.nixforge.images.plugins.module_utils._base._sshkeys import (
    HostKey,
    validate_host_key,
    validate_public_key,
)
from ansible_collections.nixforge.images.plugins.module_utils._ec2._fleet import (
    instance_type_list,
    validate_max_price,
    validate_price_overrides,
)

USER_DATA_LIMIT = 16384


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


def detect_public_address(url: str) -> str:
    """The controller's public IPv4 address, as ``url`` sees it (``ssh_cidr: auto``)."""
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


def resolve_ssh_cidrs(values: Optional[List[str]], lookup_url: str) -> List[str]:
    values = list(values or [])
    if any(str(v).strip().lower() == "auto" for v in values):
        address = detect_public_address(lookup_url)
        values = [v for v in values if str(v).strip().lower() != "auto"] + ["%s/32" % address]
    return parse_ssh_cidrs(values)


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
    build: BuildIdentity, host_key: HostKey, authorized_keys: List[str], extra: Optional[str] = None
) -> str:
    """The ``#cloud-config`` document (merged with, or followed by, the user's user data)."""
    expiry = build.expires_at
    config = _userdata.host_key_config(host_key)
    config["ssh_pwauth"] = False
    config["bootcmd"] = poweroff_commands(int(expiry.timestamp()), expiry.strftime("%Y-%m-%d %H:%M:%S UTC"))
    keys = _userdata.authorized_keys(authorized_keys)
    if keys:
        config["ssh_authorized_keys"] = keys
    return _userdata.render(config, extra)


def encode_user_data(text: str) -> str:
    data = text.encode("utf-8")
    if len(data) > USER_DATA_LIMIT:
        raise UserInputError(
            "the user data is %d bytes, more than EC2's limit of %d" % (len(data), USER_DATA_LIMIT),
            hint="Shorten 'user_data' (download large files from the instance instead)",
            parameter="user_data",
        )
    return base64.b64encode(data).decode("ascii")


def check_nested_architecture(p: Mapping[str, Any]) -> None:
    """Nested virtualization exists on x86_64 types only: refuse it with an arm64 default AMI."""
    if p.get("nested_virtualization") and p["architecture"] != "x86_64" and not p["image_id"]:
        raise UserInputError(
            "nested virtualization exists only on x86_64 types (C8i, M8i, R8i) and 'architecture' is %s"
            % p["architecture"],
            hint="Set 'architecture: x86_64' with x86_64 types such as c8i.2xlarge, or 'nested_virtualization: false'",
            parameter="architecture",
        )


class PresentInput(NamedTuple):
    host_key: HostKey
    public_key: Optional[str]
    max_price: Optional[str]
    price_overrides: Dict[str, float]
    cidrs: List[str]


def check_present_input(p: Mapping[str, Any], warn: Callable[[str], None]) -> PresentInput:
    """ec2_spot_host's checks of ``state=present`` that need no API call (they run first)."""
    host_key = validate_host_key(p["host_key_private"], p["host_key_public"])
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
    check_nested_architecture(p)
    cidrs = resolve_ssh_cidrs(p["ssh_cidr"], p["ssh_cidr_lookup_url"])
    if is_wide_open(cidrs):
        warn("ssh_cidr opens SSH to the whole Internet; give the controller's address instead")
    return PresentInput(host_key, public_key, max_price, price_overrides, cidrs)  # type: ignore[arg-type]
