# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: no compatibility promise for anything outside it.
"""The checks a pipeline makes on the controller before it rents anything: every input of
the build that the controller alone can judge (the role variables' types, the image
definition, the output directory, the controller's own tools), so that a mistake costs
seconds, not a builder. Each problem names the variable and the fix; all are reported
at once."""

from __future__ import annotations

import os
import shlex
import shutil
from typing import Any, Dict, List

import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.nixforge.images.plugins.plugin_utils._sd_image import missing_tools
from ansible_collections.nixforge.images.plugins.plugin_utils.image import InputError, resolve

ROLES_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "roles"))
# Role variables that count something or wait for something, with their smallest sense.
MINIMA = {
    "nixos_image_build_timeout": 1,
    "nixos_image_poll_interval": 1,
    "nixos_image_poll_interval_max": 1,
    "nixos_image_progress_lines": 0,
    "nixos_image_failure_lines": 0,
    "nixos_image_fetch_streams": 1,
    "nixos_image_fetch_timeout": 1,
    "nixos_image_sd_check_timeout": 1,
}


def role_spec(role: str, entry_point: str = "main", roles_dir: str = ROLES_DIR) -> Dict[str, Any]:
    """The options of a role entry point, from its meta/argument_specs.yml."""
    with open(os.path.join(roles_dir, role, "meta", "argument_specs.yml"), encoding="utf-8") as fh:
        return yaml.safe_load(fh)["argument_specs"][entry_point].get("options", {})


def validate(spec: Dict[str, Any], values: Dict[str, Any]) -> tuple[Dict[str, Any], List[str]]:
    """The values checked against a role spec (types, choices): (validated values, errors)."""
    result = ArgumentSpecValidator(spec).validate(
        {k: v for k, v in values.items() if k in spec}, validate_role_argument_spec=True
    )
    return result.validated_parameters, list(result.error_messages)


def _numbers(values: Dict[str, Any]) -> List[str]:
    out = []
    for name, least in MINIMA.items():
        value = values.get(name)
        if isinstance(value, int) and value < least:
            out.append("%s must be at least %d, got %d." % (name, least, value))
    low, high = values.get("nixos_image_poll_interval"), values.get("nixos_image_poll_interval_max")
    if isinstance(low, int) and isinstance(high, int) and high < low:
        out.append("nixos_image_poll_interval_max (%d) must not be below nixos_image_poll_interval (%d)." % (high, low))
    return out


def _dest_dir(values: Dict[str, Any], cwd: str) -> List[str]:
    """The output directory exists and is writable, or can be created."""
    dest = os.path.expanduser(str(values.get("nixos_image_dest_dir") or "artifacts"))
    dest = dest if dest.startswith("/") else os.path.normpath(os.path.join(cwd, dest))
    probe = dest
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    name = "nixos_image_dest_dir (nixforge_output_dir)"
    if not os.path.isdir(probe):
        return ["%s: %s is not a directory on the controller, so %s cannot be made there." % (name, probe, dest)]
    if not os.access(probe, os.W_OK | os.X_OK):
        return ["%s: %s is not writable by this user, so the image cannot be written to %s." % (name, probe, dest)]
    if "/" in str(values.get("nixos_image_dest_name") or ""):
        return ["nixos_image_dest_name must be a file name without '/', got %r." % values["nixos_image_dest_name"]]
    return []


def _tools(values: Dict[str, Any], mode: str) -> List[str]:
    """The controller's own tools that this build will run."""
    out = []
    lands = mode == "remote" or values.get("nixos_image_fetch", True)
    if mode == "builder" and lands and values.get("nixos_image_fetch_method") == "rsync" and not shutil.which("rsync"):
        out.append("nixos_image_fetch_method: rsync needs rsync on the controller; install it, or use ssh.")
    if mode == "remote" and not shutil.which("nix-build"):
        out.append(
            "nixforge_build_mode=remote builds with the controller's own Nix, and nix-build is not on its PATH."
            " Install Nix on the controller, or use nixforge_build_mode=builder."
        )
    if values.get("nixos_image_kind") == "sd-aarch64" and values.get("nixos_image_sd_check", True) and lands:
        missing = missing_tools()
        if missing:
            out.append(
                "nixos_image_sd_check: the SD image check needs %s on the controller (bindep.txt lists them);"
                " install them, or set nixos_image_sd_check: false." % ", ".join(missing)
            )
    try:
        shlex.split(str(values.get("nixos_image_fetch_ssh_args") or ""))
    except ValueError as exc:
        out.append("nixos_image_fetch_ssh_args cannot be split like a shell would (%s)." % exc)
    return out


def problems(values: Dict[str, Any], mode: str, cwd: str, roles_dir: str = ROLES_DIR) -> List[str]:
    """Every problem of the build's inputs (values: the role variables as the task sees them)."""
    if mode not in ("builder", "remote"):
        return [
            "nixforge_build_mode (nixos_image_build_mode) must be 'builder' (build on the builder) or 'remote'"
            " (the controller's Nix builds through the builder); got %r." % mode
        ]
    checked, out = validate(role_spec("nixos_image", roles_dir=roles_dir), values)
    for role in ("nix_bootstrap",) + (("nix_remote_builder",) if mode == "remote" else ()):
        out += validate(role_spec(role, roles_dir=roles_dir), values)[1]
    if out:  # types first: the checks below trust them
        return out
    try:
        resolve(
            checked["nixos_image_kind"],
            checked["nixos_image_flake"],
            checked["nixos_image_attribute"],
            checked["nixos_image_module"],
            os.path.join(roles_dir, "nixos_image", "files", "images"),
            cwd,
            checked["nixos_image_work_dir"],
        )
    except InputError as exc:
        out.append(str(exc))
    return out + _numbers(checked) + _dest_dir(checked, cwd) + _tools(checked, mode)
