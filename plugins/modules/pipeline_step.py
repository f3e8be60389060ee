# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: pipeline_step
short_description: The bookkeeping steps of the collection's pipeline playbooks
version_added: "0.3.0"
description:
  - Used by the playbooks C(build_do_image), C(build_sd_aarch64) and their stage playbooks, on the controller, so
    that naming a build, the checks made before renting, the failure handed from one play to the next and the
    closing summary with its cost arithmetic are written once, in Python.
  - O(step=start) names the build (C(nixforge_build_id), generated when C(build_id) of O(given) is empty), its
    pipeline, build mode and start time, and for O(kind=do) the builder defaults of a DigitalOcean image (x86_64,
    nested-virtualization types then C(*.metal) EC2 types); refuses EC2 types without KVM when C(require_kvm) of
    O(given) is true, before anything is created. With
    O(stage=true), requires a build id and the build mode C(builder).
  - O(step=failed) sets C(nixforge_error) (the task, the host and the message) and, when EC2 interrupted the builder,
    C(nixforge_interrupted). O(step=stop) fails with O(error). O(step=gone) notes when the builder was torn down.
  - O(step=retry) decides whether a build that EC2 interrupted (spot) runs once more on a fresh builder (see the
    filter nixforge.images.spot_retry), setting C(nixforge_retry) and the builder's types and market.
  - O(step=report) returns the summary lines of a finished build, or fails with the build's error.
author:
  - nixforge.images contributors (@nixforge)
options:
  step:
    description: Which step.
    type: str
    required: true
    choices: [start, failed, stop, gone, retry, report]
  kind:
    description: The image kind.
    type: str
    choices: [do, sd-aarch64]
    default: sd-aarch64
  stage:
    description: O(step=start) of a stage playbook.
    type: bool
    default: false
  given:
    description:
      - O(step=start) the user's settings, empty values counting as unset - C(build_id), C(pipeline), C(build_mode),
        C(started_epoch), C(require_kvm), C(provider), C(ec2_instance_types), C(ec2_architecture).
    type: dict
    default: {}
  task:
    description: O(step=failed) the task that failed.
    type: str
    default: ""
  msg:
    description: O(step=failed) its message.
    type: raw
    default: ""
  host:
    description: O(step=failed) the host it failed on (empty on the controller).
    type: str
    default: ""
  interrupted:
    description: O(step=failed) EC2's spot interruption notice, when that ended the build.
    type: dict
    default: {}
  error:
    description: O(step=stop) the reason.
    type: str
    default: ""
  build_id:
    description: O(step=stop) the build id.
    type: str
    default: ""
  retry:
    description:
      - O(step=retry) C(interrupted), C(builder), C(enabled), C(instance_types), C(on_demand_fallback), C(gone_epoch),
        C(architecture).
    type: dict
    default: {}
  report:
    description:
      - O(step=report) C(build_id), C(error), C(builder) (builder_host_result), C(ended), C(image) (the fetched
        image), C(published) (do_image_publish_result), C(uploaded) (do_image_publish_object, the builder's own
        upload to B2), C(existing) (an image an earlier run imported), C(earlier) (interrupted builders),
        C(candidates) (the EC2 instance types asked for, for the KVM price comparison), C(started_epoch),
        C(gone_epoch).
    type: dict
    default: {}
extends_documentation_fragment:
  - nixforge.images.attributes
  - nixforge.images.attributes.controller_only
"""

EXAMPLES = r"""
- name: Name the build
  nixforge.images.pipeline_step:
    step: start
    kind: do
    given:
      build_id: "{{ nixforge_build_id | default('') }}"
"""

RETURN = r"""
summary:
  description: O(step=report) the summary lines, each a key, a colon and the value.
  returned: success, step report
  type: list
  elements: str
"""
