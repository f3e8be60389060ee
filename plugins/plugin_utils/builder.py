# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The builder_host role's checks of its inputs and its per-build state directory on the
controller (keys, .gitignore, state.json), in one place. Unit tested."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from typing import Any, Dict, List

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import parse_duration

BUILD_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
OCTET = r"(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])"
CIDR = re.compile(r"^%s(\.%s){3}/(3[0-2]|[12]?[0-9])$" % (OCTET, OCTET))
PROVIDERS = ("ec2", "metal", "ssh")


class InputError(ValueError):
    """A role input that cannot work; the message names the variable and the fix."""


def check_build_id(build_id: Any, teardown: bool = False) -> None:
    if not isinstance(build_id, str) or not BUILD_ID.match(build_id):
        if teardown:
            raise InputError(
                "builder_host_build_id (or nixforge_build_id) must name the build to tear down"
                " (1-40 lowercase letters, digits and hyphens); got '%s'." % (build_id,)
            )
        raise InputError(
            "builder_host_build_id (or nixforge_build_id) must be 1-40 lowercase letters, digits and"
            " hyphens, starting and ending with a letter or digit; got '%s'." % (build_id,)
        )


def check_provision(p: Dict[str, Any]) -> None:
    """Every check the controller can make before anything is rented."""
    check_build_id(p["build_id"])
    if p["provider"] not in PROVIDERS:
        raise InputError("builder_host_provider must be one of %s; got '%s'." % (", ".join(PROVIDERS), p["provider"]))
    ttl_seconds(p["ttl"])
    if p["provider"] == "ssh" and (
        (p["ssh_connection"] != "local" and not p["ssh_host"])
        or not str(p["ssh_work_dir"]).startswith("/")
        or len(p["ssh_work_dir"]) < 2
    ):
        raise InputError(
            "builder_host_provider=ssh needs builder_host_ssh_host (the address of a host you can"
            " already log in to) or builder_host_ssh_connection=local, and an absolute"
            " builder_host_ssh_work_dir."
        )
    if p["provider"] == "ec2" and not p["ssh_cidr_lookup"] and not CIDR.match(p["ssh_cidr"] or ""):
        raise InputError(
            "builder_host_ssh_cidr must be the controller's public IPv4 address as a CIDR, for"
            " example 203.0.113.7/32 (got '%s'); or set builder_host_ssh_cidr_lookup=true to ask %s."
            % (p["ssh_cidr"], p["ssh_cidr_lookup_url"])
        )


def ttl_seconds(ttl: Any) -> int:
    """builder_host_ttl as seconds: duration text such as 3h, 90m or 1h30m (as every module's ttl)."""
    try:
        return int(parse_duration(ttl).total_seconds())
    except UserInputError as exc:
        raise InputError("builder_host_ttl: %s (duration text such as 3h, 90m or 1h30m)." % exc.msg) from None


def expiry(ttl: Any, now: float) -> Dict[str, Any]:
    """The builder's start and expiry times (UTC); the role reads them as builder_host__started_*
    and builder_host__expires_at (roles/builder_host/vars/main.yml)."""
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "started_epoch": int(now),
        "started_at": time.strftime(fmt, time.gmtime(now)),
        "expires_at": time.strftime(fmt, time.gmtime(int(now) + ttl_seconds(ttl))),
    }


def keygen(path: str, comment: str) -> bool:
    """An ed25519 key without passphrase at `path` unless there is one; True if made."""
    if os.path.exists(path):
        return False
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
        check=True,
        capture_output=True,
    )
    return True


def prepare_state_dir(p: Dict[str, Any]) -> Dict[str, Any]:
    """The private per-build state directory with its keys: the user key unless the
    builder is the controller itself, the host key unless the host exists already."""
    state_dir = p["state_dir"]
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    os.chmod(state_dir, 0o700)
    ignore = os.path.join(state_dir, ".gitignore")
    if not os.path.exists(ignore):
        with open(ignore, "w") as fh:
            fh.write("*\n")
        os.chmod(ignore, 0o600)
    user_key = p["provider"] != "ssh" or p["ssh_connection"] != "local"
    host_key = p["provider"] != "ssh"
    made: List[str] = []
    keys = {"user_public_key": "", "host_public_key": ""}
    if user_key:
        if keygen(os.path.join(state_dir, "id_ed25519"), "nixforge-%s" % p["build_id"]):
            made.append("id_ed25519")
        keys["user_public_key"] = _read(os.path.join(state_dir, "id_ed25519.pub"))
    if host_key:
        if keygen(os.path.join(state_dir, "ssh_host_ed25519_key"), "nixforge-%s-host" % p["build_id"]):
            made.append("ssh_host_ed25519_key")
        keys["host_public_key"] = _read(os.path.join(state_dir, "ssh_host_ed25519_key.pub"))
    return {"keys": keys, "made": made}


def write_private(path: str, text: str) -> bool:
    """Write `text` to `path` (mode 0600, replaced atomically); False when it was there already.
    Also the builders inventory's writer of pinned known_hosts files."""
    try:
        with open(path) as fh:
            if fh.read() == text:
                os.chmod(path, 0o600)
                return False
    except OSError:
        pass
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return True


def record_state(state_dir: str, machine: Dict[str, Any], extra: Dict[str, Any]) -> List[str]:
    """Pin the builder's host key (ssh connections) and write state.json: what teardown and
    a re-run read back. The machine description holds no secret (key paths, not keys).
    Returns the files written (none when both were current)."""
    written: List[str] = []
    if machine.get("connection") == "ssh":
        lines = machine.get("known_hosts_lines") or []
        if write_private(os.path.join(state_dir, "known_hosts"), "".join("%s\n" % line for line in lines)):
            written.append("known_hosts")
    state = dict(machine, **extra)
    if write_private(os.path.join(state_dir, "state.json"), json.dumps(state, indent=4, sort_keys=True) + "\n"):
        written.append("state.json")
    return written


def cleanup_paths(state_dir: str, control_path_dir: str, remove_state_dir: bool) -> List[str]:
    """What teardown removes on the controller: the private keys (or the whole state
    directory) and the SSH control sockets' directory (when there is one)."""
    keys = [os.path.join(state_dir, name) for name in ("id_ed25519", "ssh_host_ed25519_key")]
    return ([state_dir] if remove_state_dir else keys) + ([control_path_dir] if control_path_dir else [])


def remove_paths(paths: List[str], check_mode: bool = False) -> List[str]:
    """Remove files and directory trees; the ones that existed (and were removed unless check mode)."""
    gone: List[str] = []
    for path in paths:
        if not os.path.lexists(path):
            continue
        gone.append(path)
        if check_mode:
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    return gone


def read_state(state_dir: str) -> Dict[str, Any]:
    """state.json of the build, or {} when provisioning did not get that far."""
    try:
        with open(os.path.join(state_dir, "state.json")) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read().strip()
