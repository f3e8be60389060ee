# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: do_image_publish_step
short_description: The steps of the nixforge.images.do_image_publish role that only judge what happened
version_added: "0.3.0"
description:
  - Used by the role nixforge.images.do_image_publish, on the controller, so that its preflight, its input check, its
    failure messages and its published result are written once, in Python. The visible work (the upload, the import,
    the removals, the boot check) stays in the role's own tasks; apart from the preflight, this module only reads
    their registered results.
  - Reads the role's variables as the task sees them (role defaults, play variables, extra variables) -
    C(do_image_publish_build_id), C(do_image_publish_bucket), C(do_image_publish_name),
    C(do_image_publish_artifact), C(do_image_publish_object), C(do_image_publish_sha256),
    C(do_image_publish_url_mode), C(do_image_publish_wait_timeout), C(do_image_publish_keep_unbootable).
  - O(step=preflight), before a builder is paid for, checks the inputs (build id, bucket, image name), then runs
    M(nixforge.images.do_custom_image) with O(import_options) and M(nixforge.images.b2_object) with
    O(upload_options) in check mode, whatever the task's own mode, on the task's host (the controller in the
    role's plays) - the DigitalOcean token, region, regions and distribution, the shape of the URL the upload will
    give, the B2 credentials, that the bucket exists and is public for C(url_mode=public). The upload is planned
    with an empty stand-in file in Ansible's remote temporary directory, removed afterwards. Fails naming the
    variable that sets the failing module parameter. Nothing is created, uploaded or imported.
  - O(step=check) fails, before anything is created, listing every missing input, each naming the variable and the
    fix, the image included (C(do_image_publish_artifact) or C(do_image_publish_object)).
  - O(step=published) fails when the upload or the import failed, saying what was removed (the B2 object, and the
    image of a failed import), which variable to raise on a timeout, and the reaper command when the image could not
    be removed; otherwise returns the image.
  - O(step=booted) fails when the boot check failed, saying whether the image was deleted, kept, or could not be
    deleted (with the reaper command).
  - O(step=result) returns the role's result C(do_image_publish_result) (the role registers it under that name) and
    says in RV(msg), at every verbosity, what was imported or adopted, where, and how the boot check went.
  - Changes nothing.
author:
  - nixforge.images contributors (@nixforge)
options:
  step:
    description: Which step.
    type: str
    required: true
    choices: [preflight, check, published, booted, result]
  import_options:
    description:
      - O(step=preflight) the options of M(nixforge.images.do_custom_image) the main entry point will import with
        (O(ignore:state) and O(ignore:url) are set by this step).
    type: dict
    default: {}
  upload_options:
    description:
      - O(step=preflight) the options of M(nixforge.images.b2_object) the main entry point will upload with
        (O(ignore:state) and O(ignore:src) are set by this step).
    type: dict
    default: {}
  lookup:
    description:
      - O(step=published) the result of the look-up of the build's image (M(nixforge.images.do_custom_image) in check
        mode).
    type: dict
    default: {}
  upload:
    description:
      - O(step=published), O(step=result) the result of the upload (M(nixforge.images.b2_object)); empty or skipped
        when the builder uploaded.
    type: dict
    default: {}
  imported:
    description: O(step=published) the result of the import (M(nixforge.images.do_custom_image)).
    type: dict
    default: {}
  image_removal:
    description: O(step=published) the result of removing the image of a failed import.
    type: dict
    default: {}
  published:
    description: O(step=result) the result of O(step=published).
    type: dict
    default: {}
  object_removal:
    description: O(step=result) the result of removing the B2 object.
    type: dict
    default: {}
  boot:
    description: O(step=booted), O(step=result) the result of the boot check (M(nixforge.images.do_boot_check)).
    type: dict
    default: {}
  unbootable_removal:
    description: O(step=booted) the result of removing the image that did not boot.
    type: dict
    default: {}
extends_documentation_fragment:
  - nixforge.images.attributes
  - nixforge.images.attributes.controller_only
"""

EXAMPLES = r"""
- name: Check DigitalOcean and B2 before renting a builder
  nixforge.images.do_image_publish_step:
    step: preflight
    import_options:
      name: nixos-42
      region: nyc3
      build_id: "42"
    upload_options:
      bucket: my-images
      url_mode: public
      build_id: "42"
  register: do_image_publish_preflight_result

- name: Check the input
  nixforge.images.do_image_publish_step:
    step: check

- name: Publish the result
  nixforge.images.do_image_publish_step:
    step: result
    published: "{{ do_image_publish__published }}"
    upload: "{{ do_image_publish__object | default({}) }}"
    object_removal: "{{ do_image_publish__removed | default({}) }}"
    boot: "{{ do_image_publish__boot | default({}) }}"
  register: do_image_publish_result
"""

RETURN = r"""
existing:
  description:
    - O(step=preflight) the build's DigitalOcean image when it exists already, available in every region (a re-run,
      which then builds, uploads and imports nothing); empty otherwise.
  returned: success, step preflight
  type: dict
image:
  description: O(step=published) the DigitalOcean image (imported now, or the build's image found).
  returned: success, step published
  type: dict
imported:
  description: O(step=published), O(step=result) whether this run imported the image (false when it was adopted).
  returned: success, steps published and result
  type: bool
image_id:
  description: O(step=result) the image's id.
  returned: success, step result
  type: int
name:
  description: O(step=result) the image's name.
  returned: success, step result
  type: str
regions:
  description: O(step=result) the regions the image is in.
  returned: success, step result
  type: list
  elements: str
status:
  description: O(step=result) the image's status.
  returned: success, step result
  type: str
size_gigabytes:
  description: O(step=result) the image's size at DigitalOcean.
  returned: success, step result
  type: float
sha256:
  description: O(step=result) the sha256 of the uploaded file.
  returned: success, step result
  type: str
uploaded_from:
  description: O(step=result) V(builder) (C(do_image_publish_object) given) or V(controller).
  returned: success, step result
  type: str
url_mode:
  description: O(step=result) how DigitalOcean fetched the image.
  returned: success, step result
  type: str
object_removed:
  description: O(step=result) no B2 object of this run is left.
  returned: success, step result
  type: bool
boot_check:
  description: O(step=result) the result of the boot check; empty when it was skipped.
  returned: success, step result
  type: dict
msg:
  description: O(step=result) what was imported (or adopted), where, and how the boot check went, in one sentence.
  returned: success, step result
  type: str
  sample: "Imported image 7000001 (nixos-42, available) in nyc3. No boot check."
"""
