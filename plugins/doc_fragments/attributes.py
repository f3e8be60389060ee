# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Describes the attributes; modules add a fragment below (or their own block) saying how
    # much they support each one.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Runs in check mode, reporting what it would change without changing anything.
  diff_mode:
    description: In diff mode, returns what changed (or would change in check mode).
  platform:
    description: Where the module's code runs and what it talks to.
"""

    # Cloud modules: run on the controller (or an execution environment) against a provider API.
    CLOUD = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - Reports the resources that would be created or removed; creates and removes nothing.
  platform:
    support: full
    platforms: cloud
    details:
      - Runs where Ansible runs the task (usually the controller, with C(delegate_to=localhost) or a
        C(localhost) play) and calls the provider's API over HTTPS.
"""

    # Modules that work out something on the controller and change nothing anywhere.
    CONTROLLER_ONLY = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - Changes nothing in any mode, so it runs the same in check mode.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
    details:
      - Runs on the controller only.
"""

    DIFF_NONE = r"""
options: {}
attributes:
  diff_mode:
    support: none
"""

    ACTIONGROUP_AWS = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/nixforge.images.aws) or C(group/nixforge.images.all) in C(module_defaults) to set
      defaults for this module.
    support: full
    membership:
      - nixforge.images.aws
      - nixforge.images.all
"""

    ACTIONGROUP_METAL = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/nixforge.images.metal) or C(group/nixforge.images.all) in C(module_defaults) to set
      defaults (API URL, token, project) for this module.
    support: full
    membership:
      - nixforge.images.metal
      - nixforge.images.all
"""

    ACTIONGROUP_B2 = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/nixforge.images.b2) or C(group/nixforge.images.all) in C(module_defaults) to set
      defaults (credentials, API URL) for this module.
    support: full
    membership:
      - nixforge.images.b2
      - nixforge.images.all
"""

    ACTIONGROUP_DIGITALOCEAN = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/nixforge.images.digitalocean) or C(group/nixforge.images.all) in C(module_defaults) to set
      defaults (API URL, token) for this module.
    support: full
    membership:
      - nixforge.images.digitalocean
      - nixforge.images.all
"""
