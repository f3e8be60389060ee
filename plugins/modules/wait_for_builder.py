# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: wait_for_builder
short_description: Wait until Ansible can log in to a freshly booted builder
version_added: "0.2.0"
description:
  - Retries an SSH login (the C(ping) module over the host's own connection settings, host key checking on)
    until it succeeds or O(timeout) runs out, like M(ansible.builtin.wait_for_connection).
  - Unlike it, an SSH failure that waiting cannot heal ends the wait early with a message that says what to
    fix. A control socket path over the 108-byte limit of Unix sockets or a missing key file fails at once;
    a host key that does not match the pinned one, or an authentication refusal, fails once it has persisted
    for O(permanent_error_grace) seconds (sshd may answer before cloud-init installed the keys).
author:
  - nixforge.images contributors (@nixforge)
options:
  timeout:
    description: Seconds to wait in all; the task fails when they run out.
    type: int
    default: 600
  sleep:
    description: Seconds between attempts.
    type: int
    default: 2
  permanent_error_grace:
    description: Seconds a host key mismatch or an authentication refusal may last before the task fails.
    type: int
    default: 20
  require_kvm:
    description:
      - Once logged in, fail unless the builder has C(/dev/kvm) (a DigitalOcean image build runs a VM). For a host of
        the C(ssh) provider this is the only place it can be checked.
    type: bool
    default: false
  connect_timeout:
    description: Accepted for compatibility with M(ansible.builtin.wait_for_connection); the connection's own
      C(ConnectTimeout) applies.
    type: int
extends_documentation_fragment:
  - nixforge.images.attributes
attributes:
  check_mode:
    support: none
    details: Skipped in check mode.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
"""

EXAMPLES = r"""
- name: Wait until the builder accepts the build's key (fails early on a host key mismatch)
  nixforge.images.wait_for_builder:
    timeout: 300
  delegate_to: nixforge-builder-my-build
"""

RETURN = r"""
elapsed:
  description: Seconds waited.
  returned: always
  type: float
  sample: 3.2
attempts:
  description: Login attempts made.
  returned: always
  type: int
  sample: 2
kvm:
  description: Whether C(/dev/kvm) exists on the builder.
  returned: when O(require_kvm=true)
  type: bool
  sample: true
"""
