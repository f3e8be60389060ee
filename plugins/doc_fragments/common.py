# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The options here are implemented by plugins/module_utils/_base/_module.py
# (identity_argument_spec / wait_argument_spec): change both together.

from __future__ import annotations


class ModuleDocFragment:
    # Build identity: every cloud resource a module creates carries these as tags/labels.
    DOCUMENTATION = r"""
options:
  build_id:
    description:
      - Name of the build the resource belongs to. Every resource the module creates is tagged
        C(nixforge-build-id=<build_id>), a second run with the same value adopts what exists instead of
        creating more, and O(state=absent) with it removes everything of that build.
      - 1 to 40 lowercase letters, digits and hyphens, starting and ending with a letter or digit.
    type: str
    required: true
  pipeline:
    description:
      - Name of the pipeline the build belongs to, stored in the C(nixforge-pipeline) tag.
      - Same character rules as O(build_id).
    type: str
    default: default
  expires_at:
    description:
      - Moment after which the build's resources may be destroyed, as a UTC ISO-8601 timestamp such as
        V(2026-11-22T18:00:00Z). Stored in the C(nixforge-expires-at) tag; builders also power themselves off
        then, and C(playbooks/reap.yml) removes whatever is left.
      - Mutually exclusive with O(ttl). At most 7 days ahead.
    type: str
  ttl:
    description:
      - Lifetime of the build's resources counted from now, like V(90m), V(2h), V(1h30m) or V(1d); the
        expiry is computed once and stored as O(expires_at) would be.
      - When neither O(ttl) nor O(expires_at) is set, the lifetime is V(3h).
      - Mutually exclusive with O(expires_at).
    type: str
  tags:
    description:
      - Extra tags put on every resource, next to the three C(nixforge-*) tags.
      - Keys starting with C(nixforge-) are reserved and rejected.
    type: dict
    default: {}
"""

    # Waiting: modules fail (never warn) when the wait runs out.
    WAIT = r"""
options:
  wait:
    description:
      - Wait until the resource is ready (or, with O(state=absent), gone) before returning.
    type: bool
    default: true
  wait_timeout:
    description:
      - How many seconds to wait when O(wait=true). When the time runs out the module fails with the state
        it last observed; raise this value for slow providers or large resources.
    type: int
    default: 600
"""

    # A builder's SSH keys and user data: the same names and rules for every provider
    # (plugins/module_utils/_base/_sshkeys.py and _userdata.py implement them).
    BUILDER = r"""
options:
  public_key:
    description:
      - The per-build OpenSSH public key to log in with (the content of a C(.pub) file generated on the
        controller). The provider gets it as a key named C(nixforge-<build_id>-ssh), tagged with the build and
        removed with it; it is also put in the user data as an authorized key.
    type: str
  host_key_private:
    description:
      - Private SSH host key (OpenSSH or PEM format, without passphrase) the builder uses, generated on the
        controller so that its public half can be pinned in a known_hosts file before the first connection.
        Injected through the user data. Never logged or returned.
      - Give it together with O(host_key_public).
    type: str
  host_key_public:
    description:
      - Public half of O(host_key_private) (for example C(ssh-ed25519 AAAA...)); ed25519, ecdsa or rsa.
    type: str
"""
