# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: a Metal device's user data; no stable interface.
"""A device's user data (``#cloud-config``, or a NixOS module for NixOS)."""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Tuple

from ansible_collections.nixforge.images.plugins.module_utils._base import _userdata
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._sshkeys import HostKey

HOST_KEY_BEGIN = "# nixforge-host-key-begin"
HOST_KEY_END = "# nixforge-host-key-end"
NIXOS_USERDATA_PATH = "/etc/nixos/packet/userdata.nix"


def render_cloud_config(
    build_id: str,
    host_key: Optional[HostKey] = None,
    authorized_keys: Iterable[str] = (),
    user_data: Optional[str] = None,
) -> str:
    """``#cloud-config`` for Debian/Ubuntu devices: pinned host key, root's keys, the user's part.

    Metal installs the device's SSH keys for root itself; they are repeated here so that a
    device still lets us in when the image's metadata agent is late. No poweroff is
    scheduled: a powered-off Metal device is still billed, ``termination_time`` ends it.
    """
    config = _userdata.host_key_config(host_key)
    keys = _userdata.authorized_keys(list(authorized_keys))
    if keys:
        config["ssh_authorized_keys"] = keys
        config["disable_root"] = False
    comment = "nixforge.images metal_device, build %s" % build_id
    return _userdata.render(config, user_data, allow_scripts=False, comment=comment)


def nix_string(value: str) -> str:
    """A Nix double-quoted string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return '"%s"' % escaped


def _nixos_version(os_slug: str) -> Tuple[int, int]:
    match = re.match(r"^nixos_(\d+)_(\d+)", os_slug or "")
    if not match:
        return (99, 99)  # nixos_unstable and friends: current options
    return int(match.group(1)), int(match.group(2))


def render_nixos_userdata(
    build_id: str,
    os_slug: str,
    host_key: Optional[HostKey] = None,
    authorized_keys: Iterable[str] = (),
    system_features: Iterable[str] = (),
    user_module: Optional[str] = None,
) -> str:
    """A NixOS module for a NixOS device: a Nix remote builder with our keys.

    Metal's NixOS images import the user data from ``/etc/nixos/packet/userdata.nix`` at
    first boot. The pinned host key is written there as a comment block and copied to
    ``/etc/ssh`` by an activation script reading that root-only file, so the private key
    never enters the world-readable Nix store. The user's own module (``userdata``) is
    imported as is.
    """
    version = _nixos_version(os_slug)
    keys = [k.strip() for k in authorized_keys if k and k.strip()]
    features = [f for f in system_features if f]
    lines = [
        "# nixforge.images metal_device: NixOS configuration of build %s." % build_id,
        "# Imported by the NixOS image from %s at first boot." % NIXOS_USERDATA_PATH,
    ]
    if host_key:
        lines += [
            "#",
            "# The SSH host key below was generated on the controller, which pins it. It is a comment on",
            "# purpose: the activation script copies it from this root-only file to /etc/ssh, so that the",
            "# private key never enters the world-readable Nix store.",
            "%s %s" % (HOST_KEY_BEGIN, host_key.kind),
        ]
        lines += ["# " + line if line else "#" for line in host_key.private.strip().splitlines()]
        lines.append(HOST_KEY_END)
    lines.append("{ config, lib, pkgs, ... }:")
    lines.append("{")
    if user_module and user_module.strip():
        lines += ["  imports = [", "    (", _indent(user_module.strip(), 6), "    )", "  ];"]
    lines.append("  services.openssh.enable = true;")
    if host_key:
        lines += _host_key_activation(host_key)
    if keys:
        lines.append("  users.users.root.openssh.authorizedKeys.keys = [")
        lines += ["    %s" % nix_string(k) for k in keys]
        lines.append("  ];")
    trusted = '[ "root" ]'
    feature_list = "[ %s ]" % " ".join(nix_string(f) for f in features) if features else "[ ]"
    if version >= (22, 5):
        lines.append("  nix.settings.trusted-users = %s;" % trusted)
        if features:
            lines.append("  nix.settings.system-features = %s;" % feature_list)
    else:
        lines.append("  nix.trustedUsers = %s;" % trusted)
        if features:
            lines.append("  nix.systemFeatures = %s;" % feature_list)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _indent(text: str, width: int) -> str:
    pad = " " * width
    return "\n".join(pad + line if line.strip() else "" for line in text.splitlines())


def _shell_quote(text: str) -> str:
    """Single-quote for sh; the result also sits inside a Nix '' string (no '' in it)."""
    if "'" in text:
        raise UserInputError("a public key must not contain quotes", parameter="host_key_public")
    return "'%s'" % text


def _host_key_activation(host_key: HostKey) -> List[str]:
    """NixOS lines copying the pinned host key from the root-only user data file to /etc/ssh."""
    key_path = "/etc/ssh/ssh_host_%s_key" % host_key.kind
    return [
        '  services.openssh.hostKeys = [ { type = "%s"; path = "%s"; } ];' % (host_key.kind, key_path),
        "  system.activationScripts.nixforgeHostKey = lib.stringAfter [ \"etc\" ] ''",
        "    src=%s" % NIXOS_USERDATA_PATH,
        '    if [ -r "$src" ]; then',
        "      umask 077",
        "      ${pkgs.gnused}/bin/sed -n -e '/^%s/,/^%s/{' -e '/^# nixforge-host-key-/d' "
        "-e 's/^# \\{0,1\\}//' -e p -e '}' \"$src\" > %s.nixforge" % (HOST_KEY_BEGIN, HOST_KEY_END, key_path),
        "      if [ -s %s.nixforge ]; then" % key_path,
        "        mv %s.nixforge %s" % (key_path, key_path),
        "        echo %s > %s.pub" % (_shell_quote(host_key.public), key_path),
        "      fi",
        "      rm -f %s.nixforge" % key_path,
        "    fi",
        "  '';",
    ]
