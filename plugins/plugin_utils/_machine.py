# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: no compatibility promise for anything outside it.
"""One description of a builder, whichever provider gave it (``machine`` of builder_host_prepare's
describe stage, the builder_host role's ``builder_host__machine``): address, login, pinned host key
lines, price, lifecycle, expiry.
Built here from each provider's result instead of three Jinja dictionaries."""

from __future__ import annotations

import os
import subprocess
from typing import Any, Dict, List, Mapping

from ansible_collections.nixforge.images.plugins.plugin_utils.builder import InputError


def host_pattern(host: str, port: Any) -> str:
    """How known_hosts names a host: bare on port 22, ``[host]:port`` otherwise."""
    return host if int(port or 22) == 22 else "[%s]:%s" % (host, port)


def key_line(host: str, port: Any, public_key: str) -> str:
    return "%s %s" % (host_pattern(host, port), " ".join(str(public_key).split()[:2]))


def _common(state_dir: str) -> Dict[str, Any]:
    return {
        "connection": "ssh",
        "private_key_file": os.path.join(state_dir, "id_ed25519"),
        "known_hosts_file": os.path.join(state_dir, "known_hosts"),
        "work_dir": "",
        "record_file": "",
        "region": "",
        "metro": "",
        "availability_zone": "",
    }


def ec2_machine(result: Mapping[str, Any], given: Mapping[str, Any], state_dir: str) -> Dict[str, Any]:
    host_key = result.get("host_public_key") or given["host_public_key"]
    port = result.get("ssh_port") or 22
    spot = result.get("spot_price")
    price = spot if isinstance(spot, (int, float)) and not isinstance(spot, bool) else result.get("max_price") or 0
    return dict(
        _common(state_dir),
        id=result.get("instance_id"),
        type=result.get("instance_type"),
        price_per_hour=price,
        price_upper_bound=result.get("max_price") or 0,
        lifecycle=result.get("lifecycle"),
        region=given.get("region") or "",
        availability_zone=result.get("availability_zone") or "",
        adopted=bool(result.get("adopted")),
        host=result.get("ssh_host"),
        port=port,
        user=result.get("ssh_user") or "admin",
        known_hosts_lines=[key_line(result.get("ssh_host") or "", port, host_key)],
        host_public_key=host_key,
        expires_at=(result.get("build") or {}).get("expires_at") or given["expires_at"],
        kvm=bool(result.get("kvm")),
        kvm_kind=ec2_kvm_kind(result),
    )


def ec2_kvm_kind(result: Mapping[str, Any]) -> str:
    """How the instance gives /dev/kvm, for the summary: nested virtualization, bare metal or not at all."""
    if result.get("nested_virtualization"):
        return "nested virtualization"
    return "bare metal" if result.get("kvm") else ""


def metal_machine(result: Mapping[str, Any], given: Mapping[str, Any], state_dir: str) -> Dict[str, Any]:
    device = result.get("device") or {}
    return dict(
        _common(state_dir),
        id=device.get("id"),
        type=device.get("plan"),
        price_per_hour=device.get("price_per_hour") or 0,
        lifecycle="spot" if device.get("spot_instance") else "on-demand",
        metro=device.get("metro") or "",
        availability_zone=device.get("facility") or "",
        adopted=bool(result.get("adopted")),
        host=device.get("public_ipv4"),
        port=22,
        user=device.get("ssh_user") or "root",
        known_hosts_lines=[key_line(device.get("public_ipv4") or "", 22, given["host_public_key"])],
        host_public_key=given["host_public_key"],
        expires_at=device.get("termination_time") or given["expires_at"],
        kvm=bool(device.get("kvm")),
        architecture=device.get("architecture") or "",
    )


def known_lines(pattern: str, known_hosts_file: str) -> List[str]:
    """The entries for ``pattern`` in a known_hosts file (hashed ones included), via ssh-keygen -F."""
    path = os.path.expanduser(known_hosts_file)
    if not os.path.isfile(path):
        return []
    found = subprocess.run(["ssh-keygen", "-F", pattern, "-f", path], capture_output=True, text=True, check=False)
    return [line for line in found.stdout.splitlines() if line.strip() and not line.startswith("#")]


def ssh_machine(given: Mapping[str, Any], state_dir: str) -> Dict[str, Any]:
    """A host the user already has: the controller itself (connection local), or one pinned by
    its host key or by its entry in the user's known_hosts (never trusted on first use)."""
    work_dir = given["work_dir"]
    machine = dict(
        _common(state_dir),
        id=given.get("host") or "localhost",
        type="existing-host",
        price_per_hour=0,
        lifecycle="existing",
        adopted=False,
        port=given.get("port") or 22,
        host_public_key=given.get("host_key") or "",
        known_hosts_lines=[],
        expires_at=given.get("expires_at") or "",
        work_dir=work_dir,
        record_file=os.path.join(work_dir, ".nixforge-record.jsonl"),
    )
    if given.get("connection") == "local":
        user = os.environ.get("USER") or "root"
        return dict(machine, connection="local", host="localhost", user=user, private_key_file="", known_hosts_file="")
    pattern = host_pattern(given["host"], machine["port"])
    if machine["host_public_key"]:
        lines = [key_line(given["host"], machine["port"], machine["host_public_key"])]
    else:
        lines = known_lines(pattern, given.get("known_hosts_file") or "~/.ssh/known_hosts")
    if not lines:
        raise InputError(
            "The SSH host key of %s is not in %s. Set builder_host_ssh_host_key to its public host key (for example"
            " the content of /etc/ssh/ssh_host_ed25519_key.pub on that host, checked out of band) or"
            " builder_host_ssh_known_hosts_file to a file that has it. Host key checking is never turned off."
            % (pattern, given.get("known_hosts_file"))
        )
    return dict(machine, host=given["host"], user=given.get("user") or "root", known_hosts_lines=lines)


def describe(provider: str, result: Mapping[str, Any], given: Mapping[str, Any], state_dir: str) -> Dict[str, Any]:
    """``builder_host__machine`` for the provider's result (ec2, metal) or the ssh provider's settings."""
    if provider == "ec2":
        return ec2_machine(result, given, state_dir)
    if provider == "metal":
        return metal_machine(result, given, state_dir)
    return ssh_machine(given, state_dir)


SSH_OPTIONS = (
    "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
    " -o ConnectTimeout=10 -o ServerAliveInterval=15 -o ServerAliveCountMax=4"
)


def inventory_host(machine: Mapping[str, Any], inv: Mapping[str, Any], provider: str, build_id: str) -> Dict[str, Any]:
    """The builder as an inventory host, in the shape of ansible.builtin.add_host's answer (host_name,
    groups, host_vars): SSH with the per-build key and the pinned host key only, or the controller
    itself (the ssh provider's local connection)."""
    host_vars: Dict[str, Any] = {
        "ansible_connection": machine["connection"],
        "nixforge_build_id": build_id,
        "nixforge_builder_provider": provider,
        # spot or on-demand: nix_build watches an EC2 spot builder for the interruption notice
        "nixforge_builder_lifecycle": machine.get("lifecycle") or "",
        "nixforge_record_file": machine.get("record_file") or "",
        "nixforge_work_dir": machine.get("work_dir") or "",
    }
    if machine["connection"] != "ssh":
        # the controller itself runs Ansible's own Python
        host_vars["ansible_python_interpreter"] = inv["playbook_python"]
    else:
        host_vars.update(_ssh_vars(machine, inv, provider))
    return {"host_name": inv["name"], "groups": [inv["group"]], "host_vars": host_vars}


def _ssh_vars(machine: Mapping[str, Any], inv: Mapping[str, Any], provider: str) -> Dict[str, Any]:
    ssh: Dict[str, Any] = dict(
        ansible_host=machine["host"],
        ansible_port=int(machine.get("port") or 22),
        ansible_user=machine["user"],
        ansible_ssh_private_key_file=machine["private_key_file"],
        # host key checking stays on: the only key accepted is the one pinned in the per-build known_hosts
        ansible_host_key_checking=True,
        # a short directory of this build's own: a socket path must fit in 108 bytes whatever the
        # checkout's path, and no other build's SSH master is ever reused
        ansible_control_path_dir=inv["control_path_dir"],
        ansible_ssh_common_args="-o UserKnownHostsFile=%s %s" % (machine["known_hosts_file"], SSH_OPTIONS),
        # EC2 builders boot the Debian AMIs ec2_spot_host picks, whose Python is known: no interpreter
        # discovery round trip. Other providers may run any OS.
        ansible_python_interpreter="/usr/bin/python3" if provider == "ec2" else "auto_silent",
        nixforge_public_key=inv["public_key"],
        nixforge_host_public_key=machine.get("host_public_key") or "",
    )
    if machine.get("work_dir"):
        # an own host's Ansible temporary files go into our work dir (removed at teardown), not ~/.ansible
        ssh["ansible_remote_tmp"] = machine["work_dir"] + "/.ansible-tmp"
    return ssh


def builder_result(
    machine: Mapping[str, Any], inv: Mapping[str, Any], provider: str, build_id: str, state_dir: str
) -> Dict[str, Any]:
    """The role's documented ``builder_host_result`` (roles/builder_host/README.md)."""
    return {
        "provider": provider,
        "build_id": build_id,
        "id": machine.get("id"),
        "type": machine.get("type"),
        "price_per_hour": machine.get("price_per_hour"),
        "lifecycle": machine.get("lifecycle"),
        "region": machine.get("region") or "",
        "metro": machine.get("metro") or "",
        "availability_zone": machine.get("availability_zone") or "",
        "address": machine.get("host"),
        "ssh_user": machine.get("user"),
        "adopted": bool(machine.get("adopted")),
        "started_at": inv["started_at"],
        "started_epoch": int(inv["started_epoch"]),
        "expires_at": machine.get("expires_at") or inv["expires_at"],
        "inventory_hostname": inv["name"],
        "group": inv["group"],
        "state_dir": state_dir,
        "private_key_file": machine.get("private_key_file") or "",
        "public_key": inv["public_key"],
        "host_public_key": machine.get("host_public_key") or "",
        "known_hosts_file": machine.get("known_hosts_file") or "",
        "work_dir": machine.get("work_dir") or "",
        "record_file": machine.get("record_file") or "",
        "kvm": machine.get("kvm"),
        "kvm_kind": machine.get("kvm_kind") or "",
    }


def teardown_result(p: Mapping[str, Any]) -> Dict[str, Any]:
    """builder_host_teardown_result: what the provider's module removed, and why the provider
    ended a machine before we did (``<code> on <id>``, e.g. a spot interruption)."""
    result = p.get("result") or {}
    ended = [
        "%s on %s" % (e.get("code"), e.get("instance_id") or e.get("device_id")) for e in result.get("ended") or []
    ]
    removed = result.get("removed") or {}
    # what a teardown that did not wait left until the builder is terminated (its security group)
    left = result.get("left") or {}
    return {"provider": p["provider"], "build_id": p["build_id"], "removed": removed, "ended": ended, "left": left}
