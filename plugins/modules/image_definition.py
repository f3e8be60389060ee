# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: image_definition
short_description: Check the nixos_image role's inputs on the controller and resolve what to build
version_added: "0.2.0"
description:
  - The first step of the nixforge.images.nixos_image role, before anything runs on the builder. Resolves
    O(flake) (empty, C(nixforge:NAME), a directory on the controller, or a flake reference Nix fetches) and
    O(module), and fails naming the role variable and the fix when they cannot work (no C(flake.nix), a missing
    module, a module directory without C(default.nix), a module with a remote flake, an unknown O(kind)).
author:
  - nixforge.images contributors (@nixforge)
options:
  kind:
    description: V(sd-aarch64) or V(do); picks the default definition, attribute and artifact pattern.
    type: str
    default: sd-aarch64
  flake:
    description: See C(nixos_image_flake) of the role.
    type: str
    default: ""
  attribute:
    description: Flake output to build; empty takes the kind's default.
    type: str
    default: ""
  module:
    description: The user's NixOS module (file or directory) on the controller.
    type: str
    default: ""
  work_dir:
    description: Work directory on the builder (absolute).
    type: str
    default: /var/tmp/nixforge-image
  images_dir:
    description: Where the shipped definitions are; default the role's C(files/images).
    type: path
extends_documentation_fragment:
  - nixforge.images.attributes
  - nixforge.images.attributes.controller_only
"""

EXAMPLES = r"""
- name: Resolve the sandbox SD definition with a module
  nixforge.images.image_definition:
    kind: sd-aarch64
    flake: nixforge:sandbox
    module: config/sd-image.nix
  delegate_to: localhost
  register: definition
"""

RETURN = r"""
definition:
  description: What to build, for M(nixforge.images.nix_build).
  returned: success
  type: dict
  contains:
    kind: {description: The kind., type: str}
    attribute: {description: The flake output built., type: str}
    flake: {description: The resolved flake directory or reference., type: str}
    local_flake: {description: "The flake directory on the controller, or empty.", type: str}
    local_module: {description: "The module on the controller, or empty.", type: str}
    flake_ref: {description: The flake reference Nix builds on the builder., type: str}
    label: {description: "C(flake#attribute)", type: str}
    work_dir: {description: The work directory on the builder., type: str}
    patterns: {description: File name patterns of the artifact., type: list, elements: str}
    system: {description: The Nix system of the image., type: str}
"""
