#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: b2_object
short_description: Upload a build artifact to Backblaze B2 and give the URL to fetch it, or remove it
version_added: 0.2.0
description:
  - Uploads a local file (a disk image of several GB) to a Backblaze B2 bucket and returns the URL from which
    another service, such as DigitalOcean's custom image import, can fetch it.
  - Large files go up in parts of O(part_size), O(threads) at a time, streamed from disk (never whole in
    memory); every part carries its sha1, computed while it is sent, which B2 checks.
  - The sha256 of the file is stored in the file info and returned. Given as O(sha256), it is checked while the
    file is uploaded and a mismatch fails before the upload is finished; otherwise the file is read once before
    the upload to compute it (it is needed to find an object to adopt).
  - By default the object gets an unguessable name, C(nixforge/<build_id>/<32 random hex digits>/<file name>),
    so that a public bucket does not make it findable. A second run with the same O(build_id) adopts an object
    of the build with the same file name and sha256 instead of uploading again (RV(uploaded=false),
    C(changed=false)).
  - O(state=absent) deletes every version of O(name), or, without O(name), every file version and every
    unfinished large file of the build (everything under C(nixforge/<build_id>/)).
  - The objects carry the build identity as B2 file info C(nixforge-build-id), C(nixforge-pipeline) and
    C(nixforge-expires-at), next to C(sha256) and the user's O(tags).
  - If the upload fails, whatever it left (an unfinished large file, a finished version) is removed first. A large
    file whose finish went unanswered is kept when B2 lists it finished with the right size and sha256 (B2's advice).
  - The least application key it needs is described under O(application_key).
author:
  - nixforge.images contributors (@nixforge)
extends_documentation_fragment:
  - nixforge.images.common
  - nixforge.images.b2
  - nixforge.images.attributes
  - nixforge.images.attributes.cloud
  - nixforge.images.attributes.diff_none
  - nixforge.images.attributes.actiongroup_b2
options:
  bucket:
    description:
      - Name of the B2 bucket. It must exist; the module never creates or changes buckets.
      - With O(url_mode=public) it must be a public (C(allPublic)) bucket.
    type: str
    required: true
  state:
    description:
      - V(present) uploads O(src) (or adopts the build's object with the same file name and sha256).
      - V(absent) deletes every version of O(name), or without O(name) everything the build has in the bucket.
    type: str
    choices: [present, absent]
    default: present
  src:
    description:
      - The local file to upload. Required with O(state=present).
    type: path
  name:
    description:
      - Name of the object in the bucket. Default C(nixforge/<build_id>/<32 random hex digits>/<file name of
        src>).
      - When given with O(state=present), an existing latest version with the same sha256 is adopted; otherwise a
        new version is uploaded.
    type: str
  sha256:
    description:
      - Expected sha256 (hex) of O(src), checked while the file is uploaded (no extra read of the file). When
        the file does not match, the module fails before the upload is finished and nothing is left in the
        bucket.
      - When O(src) carries the record M(nixforge.images.fetch_artifact) leaves on a file it verified (an
        extended attribute with the sha256, valid while the file's size, modification time and inode are
        unchanged), the record is compared instead and the file is not hashed again; a record that differs fails
        before anything is uploaded. Without O(sha256) the record gives the sha256 (no read before the upload).
      - When an object of the build already has this sha256 it is adopted without reading O(src).
    type: str
  url_mode:
    description:
      - V(public) returns the bucket's plain download URL; the bucket must be C(allPublic), otherwise the module
        fails before uploading. The object's name is unguessable, see O(name).
      - V(authorized) returns the download URL with a download authorization token for exactly this object in its
        query string, valid for O(url_ttl); it works with private buckets. B(DigitalOcean is reported to refuse
        image URLs with a query string), so prefer V(public) for custom image imports.
      - The authorized URL grants access to the object; treat the returned RV(url) as a secret (C(no_log) on
        tasks that print it).
    type: str
    choices: [public, authorized]
    default: public
  url_ttl:
    description:
      - How long the authorized URL stays valid, like V(90m), V(1h) or V(2d); at most V(7d) (B2's limit).
      - Only with O(url_mode=authorized).
    type: str
    default: 1h
  part_size:
    description:
      - Size of the parts of a large file, in bytes or with a unit (V(100MB), V(64MiB)). Files up to this size go
        up in one request.
      - At least B2's minimum of 5 MB, at most 5 GB; at most 10,000 parts per file.
    type: raw
    default: 100MB
  threads:
    description:
      - How many parts are uploaded at the same time.
      - B2 limits each upload request to a fraction of a fast link, so more threads move more of a large file
        at once; memory does not grow with them (parts stream from disk).
      - Where the CPU is the limit (a fast local link), more threads than cores gain nothing.
    type: int
    default: 4
"""

EXAMPLES = r"""
- name: Upload the image to a public bucket under an unguessable name
  nixforge.images.b2_object:
    bucket: my-images
    src: "{{ image_path }}"
    sha256: "{{ image_sha256 }}"
    build_id: do-image-42
    ttl: 3h
  register: upload

- name: Import it into DigitalOcean from the returned URL
  nixforge.images.do_custom_image:
    name: nixos-{{ build_id }}
    url: "{{ upload.url }}"
    region: ams3
    build_id: do-image-42

- name: A private bucket and a short-lived authorized URL (not accepted by every importer)
  nixforge.images.b2_object:
    bucket: my-private-images
    src: /var/tmp/nixos.qcow2.gz
    url_mode: authorized
    url_ttl: 2h
    part_size: 200MB
    threads: 8
    build_id: do-image-42
  register: private_upload
  no_log: true  # the URL carries a download token

- name: Remove everything the build uploaded (every version and every unfinished large file)
  nixforge.images.b2_object:
    bucket: my-images
    state: absent
    build_id: do-image-42
"""

RETURN = r"""
object:
  description: The object (with O(state=present)). In check mode, before a first upload, RV(object.file_id) and
    RV(object.url) are empty and RV(object.name) is the name the upload would get, with C(<random>) in place
    of the random part of a generated name.
  returned: when O(state=present)
  type: dict
  contains:
    bucket:
      description: Bucket name.
      type: str
      sample: my-images
    name:
      description: Object name in the bucket.
      type: str
      sample: nixforge/do-image-42/6f1c0d3e9b8a47d2a1e5c3b7f9d0e2a4/nixos.qcow2.gz
    file_id:
      description: B2 file id of the version.
      type: str
    size:
      description: Size in bytes.
      type: int
      sample: 2147483648
    sha256:
      description: sha256 of the content (hex).
      type: str
    url:
      description: The download URL (see O(url_mode)).
      type: str
    upload_timestamp:
      description: When B2 finished the upload, in milliseconds since the epoch.
      type: int
    file_info:
      description: The B2 file info (build identity, C(sha256), O(tags)).
      type: dict
      sample: {"nixforge-build-id": "do-image-42", "nixforge-pipeline": "default", "sha256": "9f86d0..."}
url:
  description: The URL to fetch the object from (same as RV(object.url)). With O(url_mode=authorized) it carries a
    download token.
  returned: when O(state=present)
  type: str
  sample: https://f001.backblazeb2.com/file/my-images/nixforge/do-image-42/6f1c.../nixos.qcow2.gz
uploaded:
  description: Whether this run uploaded the file (false when an existing object was adopted).
  returned: when O(state=present)
  type: bool
sha256_checked:
  description:
    - How the sha256 of O(src) was established. V(record) - from the record of M(nixforge.images.fetch_artifact)
      (the file is unchanged since it was verified); V(upload) - O(sha256), checked while uploading; V(given) -
      O(sha256), an object with it was adopted without reading O(src); V(read) - computed by reading O(src).
  returned: when O(state=present)
  type: str
  sample: record
removed:
  description: What O(state=absent) removed (or would remove in check mode).
  returned: when O(state=absent)
  type: list
  elements: dict
  sample: [{"name": "nixforge/do-image-42/6f1c.../nixos.qcow2.gz", "file_id": "4_z27c8...", "kind": "version"}]
actions:
  description: What the module did (or, in check mode, would do), one line per change.
  returned: when something changed
  type: list
  elements: str
build:
  description: The build identity the object carries.
  returned: always
  type: dict
  sample: {"build_id": "do-image-42", "pipeline": "default", "expires_at": "2026-11-22T18:00:00Z"}
"""

import functools
import os
import re
from typing import Any, Dict, List, NoReturn, Optional

from ansible_collections.nixforge.images.plugins.module_utils._b2._client import (
    FILE_INFO_SHA256,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    REQUIRED_LIBRARIES,
    B2Client,
    FileDigest,
    b2_argument_spec,
    b2_client,
    build_prefix,
    generate_name,
    hash_file,
    parse_size,
    validate_object_name,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._checksum_record import recorded
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError, UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import (
    TAG_BUILD_ID,
    parse_duration,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._module import Action, NixforgeModule

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
INFO_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,50}$")
MAX_URL_TTL = 7 * 24 * 3600
MAX_FILE_INFO = 10  # B2's limit on file info entries


class B2Object(NixforgeModule):
    argument_spec = dict(
        bucket=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        src=dict(type="path"),
        name=dict(type="str"),
        sha256=dict(type="str"),
        url_mode=dict(type="str", choices=["public", "authorized"], default="public"),
        url_ttl=dict(type="str", default="1h"),
        part_size=dict(type="raw", default="100MB"),
        threads=dict(type="int", default=4),
    )
    module_kwargs = dict(required_if=[["state", "present", ["src"]]])
    provider_argument_spec = b2_argument_spec()
    uses_wait = False
    required_libraries = REQUIRED_LIBRARIES

    client: B2Client
    bucket: Any
    digest: Optional[FileDigest] = None
    recorded_sha256: Optional[str] = None
    src_stat: Optional[os.stat_result] = None
    existing: Optional[Dict[str, Any]] = None
    uploaded: Optional[Dict[str, Any]] = None
    url: Optional[str] = None
    part_size = 0
    url_seconds = 0
    to_delete: List[Dict[str, Any]] = []

    def secret_values(self) -> List[str]:
        client = getattr(self, "client", None)
        return super().secret_values() + (list(client.secrets) if client is not None else [])

    def exit(self, **kwargs: Any) -> NoReturn:
        self.unmask_key_id_in_url()
        super().exit(**kwargs)

    def unmask_key_id_in_url(self) -> None:
        """B2 tokens may embed the key id; Ansible would mask it in the returned URL. It is an identifier,
        not the secret: unmasked in the result, still masked in the invocation, errors and warnings."""
        key_id = self.params.get("application_key_id")
        if not key_id or key_id not in str(self.result.get("url") or ""):
            return
        spec = self.full_argument_spec()
        self.result["invocation"] = {
            "module_args": {
                k: "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" if spec.get(k, {}).get("no_log") and v is not None else v
                for k, v in self.params.items()
            }
        }
        self.module.no_log_values.discard(key_id)

    # -- prepare: input first, then the bucket, then what exists ------------------------

    def prepare(self) -> None:
        self.result["build"] = self.identity.as_dict()
        present = self.params["state"] == "present"
        if self.params.get("name"):
            validate_object_name(self.params["name"])
        if present:
            self.check_local_input()
        self.client = b2_client(self.params, threads=self.params["threads"])
        self.client.authorize()
        self.bucket = self.client.bucket(self.params["bucket"])
        if present:
            self.check_against_account()
            self.existing = self.find_adoptable()
        else:
            self.to_delete = self.build_leftovers()

    def check_local_input(self) -> None:
        """Everything that can be checked before talking to B2, in the order a user fixes it."""
        self.check_source()
        self.check_parts()
        params = self.params
        if not 1 <= params["threads"] <= 64:
            raise UserInputError("%d threads" % params["threads"], hint="Use 1 to 64", parameter="threads")
        seconds = parse_duration(params["url_ttl"], "url_ttl").total_seconds()
        if seconds > MAX_URL_TTL:
            raise UserInputError("longer than B2 allows", hint="Use at most '7d'", parameter="url_ttl")
        self.url_seconds = int(seconds)
        self.check_tags()
        self.identity.require_future_expiry()

    def check_source(self) -> None:
        """'src' is a readable file whose checksum, if given, matches the one recorded when it was fetched."""
        params = self.params
        src = params["src"]
        if not os.path.isfile(src) or not os.access(src, os.R_OK):
            raise UserInputError(
                "%r is not a readable file" % src, hint="Give the path of the file to upload", parameter="src"
            )
        if params.get("sha256") is not None:
            params["sha256"] = str(params["sha256"]).strip().lower()
            if not SHA256_RE.match(params["sha256"]):
                raise UserInputError(
                    "not a sha256 hex digest", hint="Give 64 hexadecimal digits or leave it unset", parameter="sha256"
                )
        self.recorded_sha256 = recorded(src)
        if params.get("sha256") and self.recorded_sha256 not in (None, params["sha256"]):
            raise UserInputError(
                "%s has sha256 %s (recorded when it was fetched and verified), not %s"
                % (src, self.recorded_sha256, params["sha256"]),
                hint="Check that 'src' is the artifact the checksum belongs to; nothing was uploaded",
                parameter="sha256",
            )

    def check_parts(self) -> None:
        """'part_size' is within B2's limits and cuts 'src' into no more parts than B2 accepts."""
        self.part_size = parse_size(self.params["part_size"], "part_size")
        if self.part_size < MIN_PART_SIZE:
            raise UserInputError(
                "%d bytes is below B2's minimum part size" % self.part_size,
                hint="Use at least 5MB (the default, 100MB, is what B2 recommends)",
                parameter="part_size",
            )
        if self.part_size > MAX_PART_SIZE:
            raise UserInputError(
                "%d bytes is above B2's maximum part (and single upload) size of 5 GB" % self.part_size,
                hint="Use at most 5GB",
                parameter="part_size",
            )
        self.src_stat = os.stat(self.params["src"])
        size = self.src_stat.st_size
        if -(-size // self.part_size) > MAX_PARTS:
            raise UserInputError(
                "%s bytes in parts of %d bytes would need more than %d parts" % (size, self.part_size, MAX_PARTS),
                hint="Raise 'part_size' to at least %d" % -(-size // MAX_PARTS),
                parameter="part_size",
            )

    def check_tags(self) -> None:
        """Each tag is a valid B2 file info name, and they fit in B2's file info beside ours."""
        for key in self.identity.user_tags:
            if not INFO_KEY_RE.match(str(key)):
                raise UserInputError(
                    "tag %r cannot be a B2 file info name" % key,
                    hint="Use up to 50 letters, digits, '-' and '_'",
                    parameter="tags",
                )
        if len(self.file_info(sha256="0" * 64)) + 1 > MAX_FILE_INFO:  # + large_file_sha1
            raise UserInputError(
                "B2 keeps at most %d file info entries per object" % MAX_FILE_INFO,
                hint="Give at most %d tags" % (MAX_FILE_INFO - 5),
                parameter="tags",
            )

    def check_against_account(self) -> None:
        minimum = self.client.absolute_minimum_part_size
        if self.part_size < minimum:
            raise UserInputError(
                "%d bytes is below the account's minimum part size %d" % (self.part_size, minimum),
                hint="Raise 'part_size'",
                parameter="part_size",
            )
        if self.params["url_mode"] == "public" and getattr(self.bucket, "type_", None) != "allPublic":
            raise UserInputError(
                "bucket %r is %s, so its objects cannot be fetched without authorization"
                % (self.params["bucket"], getattr(self.bucket, "type_", "not public")),
                hint="Use an allPublic bucket in 'bucket', or set 'url_mode: authorized' "
                "(DigitalOcean may refuse URLs with a query string)",
                parameter="url_mode",
            )

    def local_digest(self) -> FileDigest:
        """sha256 of src in one streaming read, when 'sha256' does not give it."""
        if self.digest is None:
            self.digest = hash_file(self.params["src"])
        return self.digest

    def src_sha256(self) -> str:
        return self.params.get("sha256") or self.recorded_sha256 or self.local_digest().sha256

    def sha256_checked(self) -> str:
        """How the sha256 of src was established (RV sha256_checked)."""
        if self.recorded_sha256:
            return "record"
        if self.params.get("sha256"):
            return "upload" if self.uploaded is not None else "given"
        return "read"

    def find_adoptable(self) -> Optional[Dict[str, Any]]:
        """The newest live object of the build with the same name (or file name) and sha256."""
        given = self.params.get("name")
        versions = self.client.versions(self.bucket, given or build_prefix(self.identity.build_id), exact=bool(given))
        latest: Dict[str, Dict[str, Any]] = {}
        for version in versions:  # B2 lists the versions of one name newest first
            latest.setdefault(version["name"], version)
        if given:
            candidates = [latest[given]] if given in latest else []
        else:
            pattern = re.compile(
                r"^%s[0-9a-f]{32}/%s$"
                % (re.escape(build_prefix(self.identity.build_id)), re.escape(os.path.basename(self.params["src"])))
            )
            candidates = [v for n, v in latest.items() if pattern.match(n)]
        candidates = [v for v in candidates if v["action"] == "upload" and v["file_info"].get(FILE_INFO_SHA256)]
        candidates.sort(key=lambda v: v.get("upload_timestamp") or 0, reverse=True)
        wanted = self.src_sha256()
        for version in candidates:
            if version["file_info"][FILE_INFO_SHA256] == wanted:
                return version
        return None

    def build_leftovers(self) -> List[Dict[str, Any]]:
        name = self.params.get("name")
        prefix = name or build_prefix(self.identity.build_id)
        found = self.client.versions(self.bucket, prefix, exact=bool(name))
        for entry in found:
            entry["kind"] = "version" if entry["action"] == "upload" else "hide marker"
        unfinished = [u for u in self.client.unfinished(self.bucket, prefix) if not name or u["name"] == name]
        for entry in unfinished:
            entry["kind"] = "unfinished large file"
        return found + unfinished

    # -- plan -----------------------------------------------------------------------

    def plan(self) -> List[Action]:
        if self.params["state"] == "absent":
            return [
                Action("delete %s %s (%s)" % (e["kind"], e["name"], e["file_id"]), functools.partial(self.remove, e))
                for e in self.to_delete
            ]
        if self.existing is not None:
            return []
        shown = self.pending_name()
        size = self.src_size
        how = "in parts of %d bytes" % self.part_size if size > self.part_size else "in one request"
        return [
            Action(
                "upload %s (%d bytes, %s) to bucket %s as %s"
                % (self.params["src"], size, how, self.params["bucket"], shown),
                self.upload,
                undo=self.delete_uploaded,
            )
        ]

    def pending_name(self) -> str:
        """The name an upload will get, ``<random>`` standing for a generated name's random part."""
        return self.params.get("name") or "%s<random>/%s" % (
            build_prefix(self.identity.build_id),
            os.path.basename(self.params["src"]),
        )

    # -- doing ----------------------------------------------------------------------

    def file_info(self, sha256: str) -> Dict[str, str]:
        return {**self.identity.tags(), FILE_INFO_SHA256: sha256}

    @property
    def src_size(self) -> int:
        return self.src_stat.st_size if self.src_stat is not None else 0

    def upload(self) -> None:
        given = self.params.get("name")
        name = given or generate_name(self.identity.build_id, self.params["src"])
        # what exists of a given name is not ours to clean up; a generated one is new
        before = self.client.existing_ids(self.bucket, name) if given else set()
        try:
            self.uploaded = self.client.upload(
                self.bucket,
                self.params["src"],
                name,
                self.file_info(self.src_sha256()),
                self.src_size,
                self.part_size,
                self.params["threads"],
                # a valid record is the fetch's verified sha256 of these very bytes: no second hashing
                verify=None if self.recorded_sha256 else self.params.get("sha256"),
            )
            if self.uploaded.pop("finish_recovered", False):
                self.warn("B2 did not answer the finish of %s; it was found finished (size, sha256), kept" % name)
            self.check_src_unchanged()
            self.url = self.make_url(name)
        except BaseException:
            self.clean_failed_upload(name, before)
            raise
        # leftovers of attempts given up on, or of retried requests whose first answer was lost
        self.client.remove_new(self.bucket, name, before, self.marks(), keep=self.uploaded["file_id"])

    def marks(self) -> Dict[str, str]:
        """File info that only this build's upload of these bytes carries."""
        return {TAG_BUILD_ID: self.identity.build_id, FILE_INFO_SHA256: self.src_sha256()}

    def check_src_unchanged(self) -> None:
        now = os.stat(self.params["src"])
        then = self.src_stat
        if then is not None and (now.st_size, now.st_mtime_ns) != (then.st_size, then.st_mtime_ns):
            raise ProviderError(
                "%s changed while it was being uploaded" % self.params["src"],
                hint="Upload a file nothing writes to any more; the object was removed",
                what="Uploading %s" % self.params["src"],
            )

    def clean_failed_upload(self, name: str, before: Any) -> None:
        try:
            self.delete_uploaded()
            # also a finish (or single upload) B2 carried out although its answer was lost
            self.client.remove_new(self.bucket, name, before, self.marks())
        except Exception as exc:  # noqa: BLE001 - the upload's own error is what the user must see
            self.warn("could not remove what the failed upload left of %s: %s" % (name, exc))

    def delete_uploaded(self) -> None:
        if self.uploaded is not None:
            self.client.delete_version(self.uploaded["file_id"], self.uploaded["name"])
            self.uploaded = None

    def remove(self, entry: Dict[str, Any]) -> None:
        if entry["kind"] == "unfinished large file":
            self.client.cancel_large_file(self.bucket, entry["file_id"], entry["name"])
        else:
            self.client.delete_version(entry["file_id"], entry["name"])

    def make_url(self, name: str) -> str:
        if self.params["url_mode"] == "authorized":
            return self.client.authorized_url(self.bucket, name, self.url_seconds)
        return self.client.public_url(self.params["bucket"], name)

    # -- describe -------------------------------------------------------------------

    def describe(self) -> Dict[str, Any]:
        if self.params["state"] == "absent":
            return {"removed": [{k: e[k] for k in ("name", "file_id", "kind")} for e in self.to_delete]}
        version = self.uploaded or self.existing
        if version is None:  # check mode, upload pending
            name = self.pending_name()
            sha256 = self.src_sha256()
            obj = {"bucket": self.params["bucket"], "name": name, "file_id": None, "size": self.src_size}
            obj.update(sha256=sha256, url=None, upload_timestamp=None, file_info=self.file_info(sha256))
            return {"object": obj, "url": None, "uploaded": False, "sha256_checked": self.sha256_checked()}
        url = self.url or self.make_url(version["name"])
        obj = {
            "bucket": self.params["bucket"],
            "name": version["name"],
            "file_id": version["file_id"],
            "size": version["size"],
            "sha256": version["file_info"].get(FILE_INFO_SHA256),
            "url": url,
            "upload_timestamp": version["upload_timestamp"],
            "file_info": version["file_info"],
        }
        if obj["file_info"].get(TAG_BUILD_ID) != self.identity.build_id and self.existing is not None:
            self.warn("the adopted object %s carries another build id in its file info" % version["name"])
        uploaded = self.uploaded is not None
        return {"object": obj, "url": url, "uploaded": uploaded, "sha256_checked": self.sha256_checked()}


def main() -> None:
    B2Object().execute()


if __name__ == "__main__":
    main()
