# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


def _action_group(group: str, defaults: str) -> str:
    """The action_group attribute of a module in group/nixforge.images.<group>."""
    return r"""
options: {}
attributes:
  action_group:
    description: Use C(group/nixforge.images.%s) or C(group/nixforge.images.all) in C(module_defaults) to set
      %s for this module.
    support: full
    membership:
      - nixforge.images.%s
      - nixforge.images.all
""" % (group, defaults, group)


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

    DIFF_NONE = r"""
options: {}
attributes:
  diff_mode:
    support: none
"""

    # One per action group in meta/runtime.yml: what module_defaults can set for its modules.
    ACTIONGROUP_AWS = _action_group("aws", "defaults")
    ACTIONGROUP_METAL = _action_group("metal", "defaults (API URL, token, project)")
    ACTIONGROUP_B2 = _action_group("b2", "defaults (credentials, API URL)")
    ACTIONGROUP_DIGITALOCEAN = _action_group("digitalocean", "defaults (API URL, token)")
