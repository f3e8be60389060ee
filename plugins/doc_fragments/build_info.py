# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The *_build_info modules: read-only listings of the builds in one provider, with the
    # same filters. Each module adds where it looks (regions, projects, buckets).
    DOCUMENTATION = r"""
options:
  build_id:
    description:
      - Only the resources of this build, whatever their expiry.
    type: str
  expired:
    description:
      - V(true) returns only expired builds, V(false) only live ones. Not set, both.
    type: bool
attributes:
  check_mode:
    support: full
    details:
      - Changes nothing in either mode; check mode returns the same builds.
  platform:
    support: full
    platforms: cloud
    details:
      - Runs where Ansible runs the task (usually the controller) and calls the provider's API.
"""
