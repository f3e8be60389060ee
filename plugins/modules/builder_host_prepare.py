# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: builder_host_prepare
short_description: Check the builder_host role's inputs and prepare the per-build state on the controller
version_added: "0.2.0"
description:
  - The first step of the nixforge.images.builder_host role's entry points, on the controller.
  - O(stage=provision) checks every input the controller can check before anything is rented (build id,
    provider, lifetime, the ssh provider's settings, the SSH ingress CIDR), fails naming the variable and the
    fix, creates the private state directory (mode 0700, with a C(.gitignore)), generates the per-build SSH user
    key and the builder's host key (ed25519) unless they exist, and returns what the role's later steps use
    (public keys, start and expiry times).
  - O(stage=describe) returns C(machine), the one description of the builder whatever the provider
    (address, port, login user, key files, pinned C(known_hosts_lines), price, lifecycle, expiry), from O(result) (the
    registered result of M(nixforge.images.ec2_spot_host) or M(nixforge.images.metal_device)) and O(given); for the
    C(ssh) provider from O(given) alone, refusing a host whose key is neither given nor in its known_hosts file, and
    writing the per-build C(known_hosts).
  - O(stage=record) pins the builder's host key in the per-build C(known_hosts) (for ssh connections) and writes
    C(state.json) from O(machine) and O(record) (mode 0600; no secret is in either). Teardown and re-runs read it.
    Without O(machine), it first describes the builder from O(result) and O(given) as O(stage=describe) does, and
    returns that C(machine) too (one step for the cloud providers).
  - With O(inventory), O(stage=record) also answers the builder_host role's documented C(builder_host_result) keys
    and adds the builder to the inventory as M(ansible.builtin.add_host) would (through the action's own
    C(add_host) on ansible-core 2.21 and later, through its C(add_host) answer before) - SSH with the per-build key
    and only the pinned host key, or the controller itself for a local connection.
  - O(stage=teardown) checks the build id and returns C(state), the build's C(state.json)
    (empty when provisioning did not get that far).
  - O(stage=cleanup) removes the per-build private keys (or, with O(remove_state_dir), the whole state
    directory) and O(control_path_dir), and returns C(removed) from O(result), the provider module's registered
    C(state=absent) result, C(ended), one C(<code> on <id>) line per machine the provider ended before the
    teardown, and C(gone_epoch), when the builder was gone; the role registers this result as
    C(builder_host_teardown_result).
  - Every stage runs in the controller's Ansible process, without starting a module.
  - Nothing is returned as C(ansible_facts) (ansible-core 2.20 deprecates reading facts as top-level variables,
    and facts would be kept in a persistent fact cache); register the result.
author:
  - nixforge.images contributors (@nixforge)
options:
  stage:
    description: Which step.
    type: str
    choices: [provision, describe, record, teardown, cleanup]
    default: provision
  build_id: {description: C(builder_host_build_id)., type: raw, required: true}
  provider: {description: C(builder_host_provider)., type: str, required: true}
  state_dir: {description: C(builder_host_state_dir)., type: path, required: true}
  ttl: {description: C(builder_host_ttl) - duration text such as C(3h) or C(90m)., type: str, default: 3h}
  ssh_connection: {description: C(builder_host_ssh_connection)., type: str, default: ssh}
  ssh_host: {description: C(builder_host_ssh_host)., type: str, default: ""}
  ssh_work_dir: {description: C(builder_host_ssh_work_dir)., type: str, default: ""}
  ssh_cidr: {description: C(builder_host_ssh_cidr)., type: str, default: ""}
  ssh_cidr_lookup: {description: C(builder_host_ssh_cidr_lookup)., type: bool, default: false}
  ssh_cidr_lookup_url: {description: C(builder_host_ssh_cidr_lookup_url)., type: str, default: ""}
  machine:
    description:
      - The provider's description of the builder (O(stage=record)); C(known_hosts_lines) are pinned.
      - Empty - describe it from O(result) and O(given) first.
    type: dict
    default: {}
  result:
    description: The provider module's registered result (O(stage=describe), O(stage=record), O(stage=cleanup)).
    type: dict
    default: {}
  given:
    description:
      - O(stage=describe) (and O(stage=record) without O(machine)) what the role knows - C(host_public_key),
        C(expires_at), C(region); for the C(ssh) provider
        C(connection), C(host), C(port), C(user), C(host_key), C(known_hosts_file), C(work_dir).
    type: dict
    default: {}
  record: {description: More fields for C(state.json) (O(stage=record))., type: dict, default: {}}
  inventory:
    description:
      - O(stage=record) - add the builder to the inventory under C(name) in C(group), with the SSH control sockets in
        C(control_path_dir), and answer C(builder_host_result) from C(public_key), C(started_at), C(started_epoch)
        and C(expires_at) as well. Empty - neither.
    type: dict
    default: {}
  control_path_dir: {description: The SSH control sockets' directory (O(stage=cleanup))., type: path, default: ""}
  remove_state_dir: {description: Remove the whole state directory (O(stage=cleanup))., type: bool, default: false}
extends_documentation_fragment:
  - nixforge.images.attributes
attributes:
  check_mode:
    support: full
    details: Checks the inputs and works out the times; writes, removes and makes nothing, and reports what it would.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
    details: Runs on the controller only (needs C(ssh-keygen)).
"""

EXAMPLES = r"""
- name: Check the inputs and make the build's keys
  nixforge.images.builder_host_prepare:
    build_id: sd-20261128-101500-ab12cd
    provider: ec2
    state_dir: "{{ playbook_dir }}/.nixforge/sd-20261128-101500-ab12cd"
    ssh_cidr: 203.0.113.7/32
"""

RETURN = r"""
keys_made:
  description: Key files generated by this run.
  returned: stage provision, not in check mode
  type: list
  elements: str
user_public_key:
  description:
    - The per-build login key (public part); empty for the controller itself (C(ssh) provider, local connection).
  returned: stage provision, not in check mode
  type: str
host_public_key:
  description: The builder's host key (public part) generated for it; empty for the C(ssh) provider.
  returned: stage provision, not in check mode
  type: str
started_epoch:
  description: When provisioning started (seconds since the epoch).
  returned: stage provision
  type: int
started_at:
  description: When provisioning started, UTC ISO-8601.
  returned: stage provision
  type: str
  sample: "2026-11-28T10:15:00Z"
expires_at:
  description: The builder's expiry (O(ttl) after the start), UTC ISO-8601; the C(nixforge-expires-at) tag.
  returned: stage provision
  type: str
  sample: "2026-11-28T13:15:00Z"
machine:
  description:
    - The builder - C(connection) (C(ssh) or C(local)), C(host), C(port), C(user), C(private_key_file),
      C(host_public_key), C(known_hosts_file), C(known_hosts_lines), C(work_dir), C(record_file), C(id), C(type),
      C(price_per_hour), C(lifecycle), C(region), C(metro), C(availability_zone), C(adopted), C(expires_at); for
      the cloud providers also C(kvm) (and C(kvm_kind) for EC2).
  returned: stages describe and record
  type: dict
add_host:
  description: The inventory entry (C(host_name), C(groups), C(host_vars)) that Ansible adds, as for
    M(ansible.builtin.add_host).
  returned: stage record with O(inventory)
  type: dict
address:
  description: The builder's address; with C(inventory_hostname), C(type), C(price_per_hour) and the other keys of
    the builder_host role's C(builder_host_result) (see the role's README).
  returned: stage record with O(inventory)
  type: str
written:
  description: Files of the state directory written (those already current are not).
  returned: stage record
  type: list
  elements: str
  sample: [known_hosts, state.json]
state:
  description: The build's C(state.json) (no secrets); empty when provisioning did not get that far.
  returned: stage teardown
  type: dict
provider:
  description: O(provider).
  returned: stage cleanup
  type: str
build_id:
  description: O(build_id).
  returned: stage cleanup
  type: str
removed:
  description: What the provider's module removed (its C(removed) in O(result)); empty for the C(ssh) provider.
  returned: stage cleanup
  type: dict
ended:
  description: The machines the provider had ended before the teardown, as C(<code> on <id>).
  returned: stage cleanup
  type: list
  elements: str
  sample: ["Server.SpotInstanceTermination on i-0abc1234"]
removed_paths:
  description: Paths on the controller that existed and were removed (private keys, state directory, control sockets).
  returned: stage cleanup
  type: list
  elements: str
gone_epoch:
  description: When the builder was gone - the provider's module waited for that before this stage (seconds since
    the epoch).
  returned: stage cleanup
  type: int
"""
