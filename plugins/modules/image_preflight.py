# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: image_preflight
short_description: Check a pipeline's build inputs on the controller before anything is created
version_added: "0.2.0"
description:
  - The first step of the pipelines (the nixforge.images.nixos_image role's entry point C(pipeline_preflight)), run
    before a builder is rented. Takes no options; it reads the variables of the roles nixforge.images.nixos_image,
    nixforge.images.nix_bootstrap and (build mode C(remote)) nixforge.images.nix_remote_builder as the task sees
    them (play variables, extra variables, role defaults).
  - Checks their types and choices against the roles' argument specs; the image definition (C(nixos_image_flake)
    exists with a C(flake.nix), a C(nixforge:NAME) is shipped, C(nixos_image_module) exists and each of its files is
    a readable regular file); counts and timeouts that cannot work; that C(nixos_image_dest_dir) is, or can be
    made, a writable directory; and the controller's own tools the build will run (C(nix-build) for the build mode
    C(remote), C(rsync) for that fetch method, C(zstd), C(fsck.vfat), C(e2fsck), C(debugfs) for the SD image check).
  - Fails listing every problem, each naming the variable and the fix. Changes nothing.
author:
  - nixforge.images contributors (@nixforge)
options: {}
extends_documentation_fragment:
  - nixforge.images.attributes
  - nixforge.images.attributes.controller_only
"""

EXAMPLES = r"""
- name: Check the build's inputs before provisioning
  nixforge.images.image_preflight:
  vars:
    nixos_image_kind: sd-aarch64
    nixos_image_build_mode: builder
"""

RETURN = r"""
problems:
  description: What is wrong, one sentence each naming the variable; empty when nothing is.
  returned: always
  type: list
  elements: str
"""
