#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: b2_builder_upload
short_description: The builder uploads a file to Backblaze B2 itself, without ever holding a B2 key
version_added: 0.3.0
description:
  - Uploads a file that lies on the task's host (the builder) to a B2 bucket straight from that host, so that the
    bytes never cross the controller's link, and returns the URL another service (DigitalOcean's custom image
    import) fetches it from. The same object as M(nixforge.images.b2_object) would upload, with the same name
    scheme, file info and adoption of a re-run's object.
  - B(No B2 key reaches the builder.) The controller authorizes with the application key, starts the large file
    (with the build identity and O(sha256) in its file info) and asks B2 for upload URLs
    (C(b2_get_upload_part_url)), each with a token valid for that one file only; only those are sent to the
    builder. A file of at most O(part_size) bytes gets single-file upload URLs (C(b2_get_upload_url)) the same
    way.
  - The builder runs a small program of Python's standard library (no package is installed there) with its own
    C(python3). The parts go up O(threads) at a time, each with the SHA-1 B2 checks, computed while it is sent; a
    part whose bytes arrive altered is sent again; an upload URL B2 ends (5xx, an expired token, a dropped
    connection) is replaced by a spare one, and when the spares run out the controller hands out fresh ones for
    the parts still missing (O(rounds)). The program and the URLs with their tokens reach the builder on the
    standard input of the command, never on a command line or in a file.
  - The builder computes the file's sha256 while the parts go up; the controller compares it with O(sha256) and
    only then finishes the large file (C(b2_finish_large_file) with every part's SHA-1). A lost answer to the
    finish is resolved by asking B2 for the file, not by uploading again.
  - On any failure (the builder died or stopped answering, a part B2 refused, a sha256 that differs) the unfinished
    large file is cancelled and whatever a lost answer left is deleted; nothing of the upload stays in the bucket.
  - The tokens are masked in every message, the application key never leaves the controller.
  - The least application key is the one M(nixforge.images.b2_object) needs (C(listBuckets), C(listFiles),
    C(writeFiles), C(deleteFiles); C(shareFiles) for O(url_mode=authorized)).
author:
  - nixforge.images contributors (@nixforge)
extends_documentation_fragment:
  - nixforge.images.b2
  - nixforge.images.attributes
  - nixforge.images.attributes.diff_none
  - nixforge.images.attributes.actiongroup_b2
options:
  build_id:
    description:
      - Name of the build; the object carries it in the file info C(nixforge-build-id) and its name starts with
        C(nixforge/<build_id>/). A re-run with the same value adopts the build's object with the same file name and
        sha256 instead of uploading again; M(nixforge.images.b2_object) with
        O(nixforge.images.b2_object#module:state=absent) removes everything of the build.
      - 1 to 40 lowercase letters, digits and hyphens, starting and ending with a letter or digit.
    type: str
    required: true
  pipeline:
    description: Name of the pipeline the build belongs to (file info C(nixforge-pipeline)).
    type: str
    default: default
  expires_at:
    description:
      - When the object may be removed, a UTC ISO-8601 timestamp (file info C(nixforge-expires-at)); mutually
        exclusive with O(ttl).
    type: str
  ttl:
    description: Lifetime of the object from now, like V(3h) (default V(3h)); mutually exclusive with O(expires_at).
    type: str
  tags:
    description: Extra file info entries (keys must not start with C(nixforge-)).
    type: dict
    default: {}
  bucket:
    description:
      - Name of the B2 bucket; with O(url_mode=public) it must be C(allPublic).
    type: str
    required: true
  src:
    description: Path of the file on the builder (the task's host).
    type: str
    required: true
  sha256:
    description:
      - The file's sha256 as recorded when it was built (hex). Stored in the file info; the sha256 the builder
        computes while uploading must equal it, or the upload is cancelled before it is finished.
    type: str
    required: true
  name:
    description:
      - Name of the object. Default C(nixforge/<build_id>/<32 random hex digits>/<file name of src>).
    type: str
  url_mode:
    description:
      - V(public) returns the bucket's plain download URL (the bucket must be C(allPublic)); V(authorized) adds a
        download authorization token to the URL (treat it as a secret; DigitalOcean may refuse such URLs).
    type: str
    choices: [public, authorized]
    default: public
  url_ttl:
    description: How long an authorized URL stays valid (at most V(7d)).
    type: str
    default: 1h
  part_size:
    description:
      - Size of the parts, in bytes or with a unit (V(100MB)); a file up to this size goes up in one request.
        5 MB to 5 GB, at most 10,000 parts.
    type: raw
    default: 100MB
  threads:
    description: Parts uploaded at the same time by the builder (each with an upload URL of its own).
    type: int
    default: 8
  rounds:
    description:
      - How many times the controller hands out fresh upload URLs for parts whose URLs B2 ended, before the
        upload fails (and is cancelled).
    type: int
    default: 4
  timeout:
    description:
      - Seconds the builder waits for B2 on one request (connection, a block of the body, the answer) before it
        gives the request up and tries again with another URL.
    type: int
    default: 300
  remote_python:
    description: The Python 3 on the builder; default the host's C(ansible_python_interpreter), else C(python3).
    type: str
    default: ""
  image_check:
    description:
      - V(digitalocean) reads the file on the builder before anything goes to B2 and fails when DigitalOcean's custom
        image import would refuse it (format, compression, size), as M(nixforge.images.do_custom_image)'s
        O(nixforge.images.do_custom_image#module:src) check does on the controller.
    type: str
    choices: [none, digitalocean]
    default: none
attributes:
  check_mode:
    support: full
    details: Checks the file on the builder, the credentials and the bucket, and reports the upload; uploads nothing.
  platform:
    support: full
    platforms: posix
    details:
      - The task's host is the builder (it needs Python 3.6 or later and HTTPS to B2); the B2 API calls run on
        the controller, which needs b2sdk.
notes:
  - With O(ca_bundle) (or E(B2_CA_BUNDLE)) the builder trusts the same certificate authorities for B2 as the
    controller; without it, its system's.
"""

EXAMPLES = r"""
- name: Upload the image from the builder (the key stays on the controller)
  nixforge.images.b2_builder_upload:
    bucket: my-images
    src: /var/tmp/nixforge-image/out/nixos.qcow2.gz
    sha256: "{{ built.sha256 }}"
    build_id: do-image-42
    ttl: 3h
  become: true
  register: upload

- name: Import it into DigitalOcean
  nixforge.images.do_custom_image:
    name: nixos-do-image-42
    url: "{{ upload.url }}"
    region: ams3
    build_id: do-image-42
  delegate_to: localhost
"""

RETURN = r"""
object:
  description: The object, as M(nixforge.images.b2_object) returns it.
  returned: success, not in check mode
  type: dict
  contains:
    bucket:
      description: Bucket name.
      type: str
    name:
      description: Object name.
      type: str
    file_id:
      description: B2 file id.
      type: str
    size:
      description: Bytes.
      type: int
    sha256:
      description: The sha256 in its file info.
      type: str
    url:
      description: The URL to fetch it from.
      type: str
    upload_timestamp:
      description: Milliseconds since the epoch.
      type: int
    file_info:
      description: The B2 file info.
      type: dict
url:
  description: Same as RV(object.url).
  returned: success, not in check mode
  type: str
uploaded:
  description: Whether this run uploaded (false when the build's object with this sha256 was adopted).
  returned: success, not in check mode
  type: bool
parts:
  description: Number of parts (1 for a single-request upload).
  returned: when uploaded
  type: int
rounds:
  description: Runs of the builder's program (1 unless B2 ended more upload URLs than there were spares).
  returned: when uploaded
  type: int
attempts:
  description: Part requests the builder made (more than RV(parts) when some were sent again).
  returned: when uploaded
  type: int
retired:
  description: Upload URLs given up (ended by B2 or by a broken connection).
  returned: when uploaded
  type: int
notes:
  description: Why requests were sent again (tokens masked), the last 20.
  returned: when uploaded
  type: list
  elements: str
seconds:
  description: Seconds from the start of the upload until the file was finished in B2.
  returned: when uploaded
  type: float
finish_recovered:
  description: The finish's answer was lost and the file was found finished.
  returned: when uploaded
  type: bool
actions:
  description: What would be done (check mode).
  returned: check mode
  type: list
  elements: str
build:
  description: The build identity the object carries.
  returned: success, not in check mode
  type: dict
"""
