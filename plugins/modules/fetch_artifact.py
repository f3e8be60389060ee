# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: fetch_artifact
short_description: Fetch a large file from a builder to the controller, resumably, with sha256 checked on both ends
version_added: "0.2.0"
description:
  - Copies O(src) from the task's host to O(dest) on the controller over that host's own SSH settings
    (address, port, login user, private key file, C(ansible_ssh_common_args) and C(ansible_ssh_extra_args),
    so the pinned known_hosts and the per-build key apply; key authentication only, C(BatchMode)).
  - The file travels in O(streams) parallel SSH streams; stream I(i) carries the 4 MiB chunks I(i), I(i+N), ...,
    so the bytes arrive in order overall and the controller hashes them while they come. The builder computes
    the sha256 of its file at the same time. No separate pass over the file is made after the transfer.
  - The partial file is C(.<name>.part) next to O(dest), with each stream's progress in C(.<name>.part.state);
    a run cut off (timeout, Ctrl-C, network) resumes every stream where it stopped, as long as the source is the
    same file (path, size, modification time). A copy whose sha256 differs from the builder's is removed and
    fetched once more from scratch; when that copy differs too, the task fails and nothing is kept.
    A file at O(dest) with the builder's sha256 is not fetched again.
  - The verified sha256 is recorded on O(dest) in the extended attribute C(user.nixforge.sha256), with the file's
    size, modification time and inode, where the filesystem allows it. M(nixforge.images.b2_object) and a later
    fetch to the same O(dest) use it instead of hashing the file again, as long as the file is unchanged.
  - Runs on the controller; the builder needs a Python 3 (the one Ansible uses) and nothing else.
author:
  - nixforge.images contributors (@nixforge)
options:
  src:
    description: Path of the file on the builder (readable by the login user).
    type: str
    required: true
  dest:
    description: Path of the file on the controller; its directory is created.
    type: path
    required: true
  sha256:
    description: The expected sha256 if known; then the builder does not compute it.
    type: str
    default: ""
  method:
    description:
      - V(ssh) is the parallel streams described above.
      - V(rsync) runs C(rsync --inplace --append) over the same ssh command (rsync on both ends), hashing on the
        controller as the file grows.
    type: str
    choices: [ssh, rsync]
    default: ssh
  streams:
    description: Parallel SSH streams for the V(ssh) method.
    type: int
    default: 4
  timeout:
    description: Seconds before the transfer is stopped and the task fails (a rerun resumes).
    type: int
    default: 3600
  ciphers:
    description: SSH cipher preference; ciphers in the host's SSH arguments win. Empty keeps ssh's default.
    type: str
    default: aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com
  ssh_args:
    description: More ssh arguments for the transfer, one shell-quoted string.
    type: str
    default: ""
  progress_interval:
    description: Seconds between two progress lines.
    type: int
    default: 15
  remote_python:
    description: Python on the builder; empty takes the host's C(ansible_python_interpreter) or C(python3).
    type: str
    default: ""
extends_documentation_fragment:
  - nixforge.images.attributes
attributes:
  check_mode:
    support: full
    details: Reports that it would fetch; transfers nothing.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
    details: Runs on the controller; needs the C(ssh) client there, and an ssh or paramiko connection to the host.
"""

EXAMPLES = r"""
- name: Fetch the image with its sha256 checked on both ends
  nixforge.images.fetch_artifact:
    src: /nix/store/xxx-nixos-sd-image/sd-image/nixos.img.zst
    dest: "{{ playbook_dir }}/artifacts/nixos.img.zst"
    streams: 4
  register: fetched
"""

RETURN = r"""
path:
  description: The file on the controller.
  returned: always
  type: str
sha256:
  description: Its sha256, the same on the builder and on the controller.
  returned: success
  type: str
size:
  description: Bytes.
  returned: success
  type: int
seconds:
  description: Duration of the transfer, both hashes included (0.0 when the file was already there).
  returned: success
  type: float
mib_per_s:
  description: Rate of the bytes moved in this run.
  returned: success
  type: float
resumed_bytes:
  description: Bytes an earlier, interrupted run had already fetched.
  returned: success
  type: int
corrupt_copies:
  description:
    - The sha256 of each copy that differed from the builder's file (bytes changed on the way, or in the partial
      file an earlier run kept). Such a copy is removed and the file fetched once more from scratch; when the
      second copy differs too the task fails and nothing is kept at O(dest).
  returned: success
  type: list
  elements: str
  version_added: 0.2.0
already_there:
  description: Whether O(dest) already held the file.
  returned: success
  type: bool
method:
  description: O(method).
  returned: always
  type: str
source:
  description: O(src).
  returned: always
  type: str
builder:
  description: Inventory name of the host.
  returned: always
  type: str
"""
