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
  - O(step=start) names the build (its id, generated when C(build_id) of O(given) is empty), its pipeline, build
    mode and start time, and works out the builder's EC2 settings and whether it needs KVM (for O(kind=do) the
    builder defaults of a DigitalOcean image - x86_64, nested-virtualization types then C(*.metal) EC2 types); refuses
    EC2 types without KVM for O(kind=do) when C(require_kvm) is true, before anything is created. With
    O(stage=true), requires a build id and the build mode C(builder).
  - O(step=failed) returns C(error) (the task, the host and the message) and C(interrupted), EC2's notice when it
    interrupted the builder. O(step=stop) fails with O(error). O(step=gone) notes when the builder was torn down.
  - O(step=retry) decides whether a build that EC2 interrupted (spot) runs once more on a fresh builder, and on which
    instance types and market (see the filter nixforge.images.spot_retry).
  - O(step=report) returns the summary lines of a finished build in C(msg), or fails with the build's error.
  - The steps that have something to tell (V(start) the build's name, V(retry) what happens after an interruption,
    V(report) the summary) say it in C(msg) and show their result without C(-v), as M(ansible.builtin.debug) does,
    so that a playbook needs no debug task after them.
  - Every step answers in its result, for the playbooks to register; none sets facts (ansible-core 2.20 deprecates
    reading facts as top-level variables, and facts would be kept in a persistent fact cache).
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
        C(started_epoch), C(require_kvm), C(provider), C(ec2_instance_types), C(ec2_architecture),
        C(ec2_nested_virtualization), C(ec2_on_demand_fallback), C(ec2_market).
    type: dict
    default: {}
  previous:
    description:
      - O(step=start) the result of this step earlier in the same run (a retry, or the provision stage after the
        stage's input check); its C(build_id), C(pipeline), C(build_mode) and C(started_epoch) are kept.
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
    description: O(step=stop) and O(step=retry) the build id.
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
  register: nixforge__build  # its msg, shown, is "Build <id> (pipeline <pipeline>, build mode <mode>)"
"""

RETURN = r"""
build_id:
  description: O(step=start) the build id (the given one, or a new one such as C(sd-20261128-101500-ab12cd)).
  returned: success, step start
  type: str
pipeline:
  description: O(step=start) the value of the C(nixforge-pipeline) tag (default C(do-image) or C(sd-aarch64)).
  returned: success, step start
  type: str
build_mode:
  description: O(step=start) C(builder) or C(remote).
  returned: success, step start
  type: str
started_epoch:
  description: O(step=start) when the build started (seconds since the epoch; a retry keeps the first start).
  returned: success, step start
  type: int
require_kvm:
  description: O(step=start) whether the builder must have C(/dev/kvm) (default true for O(kind=do)).
  returned: success, step start with O(stage=false)
  type: bool
ec2:
  description:
    - O(step=start) the builder's EC2 settings, keyed as the builder_host role's C(builder_host_ec2_<key>) -
      C(architecture), C(instance_types), C(nested_virtualization), C(on_demand_fallback), C(market); the user's, else
      the defaults of the kind (a DigitalOcean image - x86_64, KVM types, nested virtualization, on-demand fallback).
  returned: success, step start with O(stage=false)
  type: dict
error:
  description: 'O(step=failed) what failed - C(<task> on <host>: <message>).'
  returned: step failed
  type: str
interrupted:
  description: O(step=failed) EC2's spot interruption notice when that ended the build, else empty.
  returned: step failed
  type: dict
gone_epoch:
  description: O(step=gone) when the builder was gone (seconds since the epoch).
  returned: step gone
  type: int
retry:
  description: O(step=retry) whether the build runs once more on a fresh builder.
  returned: step retry
  type: bool
instance_types:
  description: O(step=retry) the fresh builder's candidate EC2 instance types.
  returned: step retry
  type: list
  elements: str
market:
  description: O(step=retry) the fresh builder's market, C(spot) or C(on-demand).
  returned: step retry
  type: str
earlier:
  description: O(step=retry) the builders given up, each with its C(type), C(seconds), C(cost) and summary C(line).
  returned: step retry
  type: list
  elements: dict
reason:
  description: O(step=retry) why the build runs once more, or why not.
  returned: step retry
  type: str
msg:
  description:
    - O(step=start) the build's id, pipeline and build mode, in one line.
    - O(step=retry) what happens after EC2 interrupted the build (returned only then).
    - O(step=report) the summary lines, each a key, a colon and the value (a list).
  returned: success, steps start, retry and report
  type: raw
"""
