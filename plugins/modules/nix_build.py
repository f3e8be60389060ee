# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: nix_build
short_description: Build a Nix flake output on a builder in the background, with progress, and find the artifact
version_added: "0.2.0"
description:
  - The build step of the nixforge.images.nixos_image role. Copies the image definition resolved by
    M(nixforge.images.image_definition) (a flake directory on the controller, with the user's NixOS module as
    C(./nixforge-module)) and a build script to the work directory on the builder in one archive, and starts
    C(nix build) (or Nix in a container) detached from the SSH session.
  - Follows it in rounds that end as soon as the build does and grow from O(poll_interval) to
    O(poll_interval_max) seconds, printing the elapsed time and the last O(progress_lines) lines of the log.
  - The build script stops the build itself after O(timeout) seconds (so it ends even when the controller is
    gone). A failed build fails the task with the reason, the last O(failure_lines) lines of the log, and the
    whole log copied to O(log_dest).
  - Then finds exactly one artifact of the kind in the output, or fails listing what the output holds.
author:
  - nixforge.images contributors (@nixforge)
options:
  definition:
    description:
      - The C(definition) returned by M(nixforge.images.image_definition).
      - Empty - resolve it from O(image) on the controller first, as M(nixforge.images.image_definition) does.
    type: dict
    default: {}
  image:
    description:
      - The options of M(nixforge.images.image_definition) (C(kind), C(flake), C(attribute), C(module),
        C(work_dir), C(images_dir)), used when O(definition) is empty. An input that cannot be built fails the
        task before anything runs on the builder.
    type: dict
    default: {}
  method:
    description: V(nix) runs the host's Nix; V(docker) runs Nix in O(docker_image).
    type: str
    choices: [nix, docker]
    default: nix
  nix_args:
    description: Extra C(nix build) arguments.
    type: list
    elements: str
    default: []
  docker_image:
    description: Image for the V(docker) method.
    type: str
    default: docker.io/nixos/nix:2.28.5
  timeout:
    description: Seconds before the build is stopped and the task fails.
    type: int
    default: 7200
  poll_interval:
    description: Seconds of the first round of waiting.
    type: int
    default: 15
  poll_interval_max:
    description: Longest round of waiting, in seconds.
    type: int
    default: 300
  progress_lines:
    description: Log lines shown with each progress report.
    type: int
    default: 5
  failure_lines:
    description: Log lines shown when the build fails.
    type: int
    default: 40
  log_dest:
    description: Where the whole build log goes on the controller when the build fails.
    type: path
    required: true
  sha256:
    description: Also compute the artifact's sha256 on the builder (when it is not fetched, which hashes it anyway).
    type: bool
    default: false
  spot_notice:
    description:
      - Look for EC2's spot interruption notice (instance metadata C(/latest/meta-data/spot/instance-action))
        every 2 seconds while following the build. When it appears, the module fails at once with
        C(interrupted by EC2 (spot)) and returns RV(interrupted), so that the play tears down without waiting
        for the build or for EC2 to take the instance away.
      - Not set, it is on when the builder is an EC2 spot instance (host variables C(nixforge_builder_provider=ec2)
        and C(nixforge_builder_lifecycle=spot), as P(nixforge.images.builder_host#role) and the
        P(nixforge.images.builders#inventory) inventory set them).
    type: bool
extends_documentation_fragment:
  - nixforge.images.attributes
attributes:
  check_mode:
    support: full
    details: Reports that it would build; runs nothing on the builder.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
    details: Runs on the builder (with the task's C(become)); needs Nix there (role nixforge.images.nix_bootstrap).
"""

EXAMPLES = r"""
- name: Resolve the definition
  nixforge.images.image_definition:
    kind: sd-aarch64
  register: definition
  delegate_to: localhost

- name: Build it
  nixforge.images.nix_build:
    definition: "{{ definition.definition }}"
    log_dest: "{{ playbook_dir }}/artifacts/build.log"
  become: true
  register: built
"""

RETURN = r"""
artifact:
  description: Path of the artifact on the builder.
  returned: success
  type: str
name:
  description: Its file name.
  returned: success
  type: str
size:
  description: Bytes.
  returned: success
  type: int
sha256:
  description: Its sha256, computed on the builder.
  returned: success with O(sha256=true)
  type: str
build_seconds:
  description: Duration of the build command on the builder.
  returned: success
  type: float
definition:
  description: The image definition built (that of O(definition), or resolved from O(image)).
  returned: when the definition is known or resolves
  type: dict
label:
  description: C(flake#attribute) that was built.
  returned: always
  type: str
work_dir:
  description: The work directory on the builder.
  returned: always
  type: str
interrupted:
  description: EC2's spot interruption notice, when the build was given up for it (O(spot_notice)).
  returned: when the builder got a spot interruption notice
  type: dict
  sample: {provider: ec2, market: spot, notice: '{"action": "terminate", "time": "2026-12-06T22:00:00Z"}'}
exit_code:
  description:
    - Exit code of a failed build. None when the controller stopped it at the timeout; -1 when the build
      process vanished without one; -2 when EC2 gave a spot interruption notice.
  returned: failure
  type: int
"""
