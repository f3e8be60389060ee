# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: the builder uploads a file to B2 itself; the B2 key stays on the controller.

Runs against the builder host. The controller's part (the key, the large file, the upload
URLs, the sha256 check, the finish, the clean-up) is ``module_utils/_b2/_direct.py``, in
this process; the builder's part is ``module_utils/_b2/_builder_parts.py``, run with the
builder's own python3 (standard library only) over the host's connection, its source and
its job (upload URLs and tokens) on the standard input, never on a command line.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from typing import Any, Dict, Optional

from ansible.errors import AnsibleConnectionFailure
from ansible.module_utils.common.text.converters import to_text
from ansible.utils.display import Display
from ansible_collections.nixforge.images.plugins.module_utils._b2 import _builder_parts
from ansible_collections.nixforge.images.plugins.module_utils._b2._client import (
    FILE_INFO_SHA256,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    b2_argument_spec,
    b2_client,
    build_prefix,
    generate_name,
    parse_size,
    validate_object_name,
)
from ansible_collections.nixforge.images.plugins.module_utils._b2._direct import DirectUpload
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import NixforgeError, UserInputError, redact
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import (
    BuildIdentity,
    identity_argument_spec,
    parse_duration,
)
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean import _preflight
from ansible_collections.nixforge.images.plugins.plugin_utils._action import NixforgeAction

display = Display()

# keep in step with DOCUMENTATION in plugins/modules/b2_builder_upload.py
ARGUMENT_SPEC: Dict[str, Any] = dict(
    identity_argument_spec(),
    **b2_argument_spec(),
    bucket=dict(type="str", required=True),
    src=dict(type="str", required=True),
    sha256=dict(type="str", required=True),
    name=dict(type="str"),
    url_mode=dict(type="str", choices=["public", "authorized"], default="public"),
    url_ttl=dict(type="str", default="1h"),
    part_size=dict(type="raw", default="100MB"),
    threads=dict(type="int", default=8),
    rounds=dict(type="int", default=4),
    timeout=dict(type="int", default=300),
    remote_python=dict(type="str", default=""),
    image_check=dict(type="str", choices=["none", "digitalocean"], default="none"),
)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# reads the script's source (its length first), runs it; the job follows on the same input
BOOTSTRAP = (
    "import sys;b=sys.stdin.buffer;n=int(b.readline());"
    "exec(compile(b.read(n),'nixforge_b2_builder_parts','exec'),{'__name__':'__main__'})"
)
# run after _digitalocean/_preflight.py's source on the builder: what DigitalOcean would refuse
IMAGE_CHECK = b"""
import json as _json, sys as _sys
_path = _json.loads(_sys.stdin.buffer.readline().decode("utf-8"))["path"]
try:
    print(_json.dumps({"facts": inspect_image(_path).as_dict()}))
except ImageRefused as _exc:
    print(_json.dumps({"refused": _exc.reason, "hint": _exc.hint}))
"""


def check_args(args: Dict[str, Any]) -> int:
    """Everything checked before B2 is called; the part size in bytes."""
    args["sha256"] = str(args["sha256"]).strip().lower()
    if not SHA256_RE.match(args["sha256"]):
        raise UserInputError(
            "not a sha256 hex digest", hint="Give the 64 hex digits of the file's sha256", parameter="sha256"
        )
    if args.get("name"):
        validate_object_name(args["name"])
    part_size = parse_size(args["part_size"], "part_size")
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise UserInputError(
            "%d bytes is outside B2's part sizes" % part_size, hint="Use 5MB to 5GB", parameter="part_size"
        )
    for option, low, high in (("threads", 1, 64), ("rounds", 1, 20), ("timeout", 10, 86400)):
        if not low <= int(args[option]) <= high:
            raise UserInputError(
                "%s is out of range" % args[option], hint="Use %d to %d" % (low, high), parameter=option
            )
    if parse_duration(args["url_ttl"], "url_ttl").total_seconds() > 7 * 24 * 3600:
        raise UserInputError("longer than B2 allows", hint="Use at most '7d'", parameter="url_ttl")
    return part_size


class ActionModule(NixforgeAction):
    argument_spec = ARGUMENT_SPEC
    _VALID_ARGS = frozenset(ARGUMENT_SPEC) | frozenset(["realm"])

    def act(self, result: Dict[str, Any], params: Dict[str, Any], task_vars: Dict[str, Any]) -> Dict[str, Any]:
        secrets = [params.get("application_key") or ""]
        try:
            return dict(result, **self.upload(params, task_vars, secrets))
        except NixforgeError as exc:
            return dict(result, failed=True, msg=redact(exc.format(), secrets))

    def upload(self, args: Dict[str, Any], task_vars: Dict[str, Any], secrets: list) -> Dict[str, Any]:
        part_size = check_args(args)
        ident = BuildIdentity.from_params(args)
        ident.require_future_expiry()
        size = self.remote_size(args["src"])
        python = args["remote_python"] or self.remote_python(task_vars)
        if args["image_check"] == "digitalocean":
            self.check_image(python, args["src"])
        if -(-size // part_size) > MAX_PARTS:
            raise UserInputError(
                "too many parts", hint="Raise 'part_size' to at least %d" % -(-size // MAX_PARTS), parameter="part_size"
            )
        client = b2_client(args, threads=args["threads"])
        client.authorize()
        secrets.extend(client.secrets)
        bucket = client.bucket(args["bucket"])
        self.check_bucket(args, bucket)
        info = {**ident.tags(), FILE_INFO_SHA256: args["sha256"]}
        adopted = self.adoptable(client, bucket, args, ident)
        if adopted is not None:
            return self.answer(client, bucket, args, adopted, uploaded=False, ident=ident)
        name = args.get("name") or generate_name(ident.build_id, args["src"])
        if self._task.check_mode:
            shown = args.get("name") or "%s<random>/%s" % (build_prefix(ident.build_id), os.path.basename(args["src"]))
            return dict(
                changed=True,
                actions=[
                    "upload %s (%d bytes) from the builder to bucket %s as %s"
                    % (args["src"], size, args["bucket"], shown)
                ],
            )
        settings = dict(src=args["src"], size=size, name=name, info=info, sha256=args["sha256"], part_size=part_size)
        settings.update(
            threads=args["threads"], rounds=args["rounds"], timeout=args["timeout"], cadata=self.cadata(args)
        )
        settings["before"] = client.existing_ids(bucket, name) if args.get("name") else set()
        upload = DirectUpload(client, bucket, lambda job: self.run_remote(python, job, client.secrets), settings)
        try:
            entry = upload.upload()
        finally:
            secrets.extend(client.secrets)
        answer = self.answer(client, bucket, args, entry, uploaded=True, ident=ident)
        answer.update(upload.stats, finish_recovered=upload.finish_recovered)
        if upload.finish_recovered:
            display.warning("B2 did not answer the finish of %s; it was found finished (size, sha256), kept" % name)
        return answer

    def check_bucket(self, args: Dict[str, Any], bucket: Any) -> None:
        if args["url_mode"] == "public" and getattr(bucket, "type_", None) != "allPublic":
            raise UserInputError(
                "bucket %r is %s, so its objects cannot be fetched without authorization"
                % (args["bucket"], getattr(bucket, "type_", "not public")),
                hint="Use an allPublic bucket in 'bucket', or set 'url_mode: authorized'",
                parameter="url_mode",
            )

    @staticmethod
    def adoptable(client: Any, bucket: Any, args: Dict[str, Any], ident: BuildIdentity) -> Optional[Dict[str, Any]]:
        """The build's newest object of the same file name (or the given name) and sha256: a re-run's."""
        given = args.get("name")
        pattern = re.compile(
            r"^%s[0-9a-f]{32}/%s$" % (re.escape(build_prefix(ident.build_id)), re.escape(os.path.basename(args["src"])))
        )
        found = client.versions(bucket, given or build_prefix(ident.build_id), exact=bool(given))
        latest: Dict[str, Dict[str, Any]] = {}
        for version in found:  # newest first for each name
            latest.setdefault(version["name"], version)
        for version in sorted(latest.values(), key=lambda v: v.get("upload_timestamp") or 0, reverse=True):
            right_name = version["name"] == given if given else bool(pattern.match(version["name"]))
            if (
                right_name
                and version["action"] == "upload"
                and version["file_info"].get(FILE_INFO_SHA256) == args["sha256"]
            ):
                return {"fileId": version["file_id"], "fileName": version["name"], "contentLength": version["size"],
                        "fileInfo": version["file_info"], "uploadTimestamp": version["upload_timestamp"]}  # fmt: skip
        return None

    def answer(
        self,
        client: Any,
        bucket: Any,
        args: Dict[str, Any],
        entry: Dict[str, Any],
        uploaded: bool,
        ident: BuildIdentity,
    ) -> Dict[str, Any]:
        name = entry.get("fileName")
        if args["url_mode"] == "authorized":
            url = client.authorized_url(bucket, name, int(parse_duration(args["url_ttl"], "url_ttl").total_seconds()))
        else:
            url = client.public_url(args["bucket"], name)
        obj = {
            "bucket": args["bucket"],
            "name": name,
            "file_id": entry.get("fileId"),
            "size": entry.get("contentLength"),
        }
        info = dict(entry.get("fileInfo") or {})
        obj.update(
            sha256=info.get(FILE_INFO_SHA256), url=url, upload_timestamp=entry.get("uploadTimestamp"), file_info=info
        )
        return dict(changed=uploaded, uploaded=uploaded, object=obj, url=url, build=ident.as_dict())

    @staticmethod
    def cadata(args: Dict[str, Any]) -> str:
        """The CAs the controller trusts for B2, for the builder to trust too (empty: its system's)."""
        path = args.get("ca_bundle")
        if not path:
            return ""
        with open(path, encoding="utf-8") as handle:
            return handle.read()

    def remote_python(self, task_vars: Dict[str, Any]) -> str:
        python = task_vars.get("ansible_python_interpreter") or task_vars.get("ansible_facts", {}).get(
            "discovered_interpreter_python"
        )
        python = self._templar.template(python) if python else ""
        return python if python and python.startswith("/") else "python3"

    def remote_size(self, src: str) -> int:
        res = self._low_level_execute_command("stat -L -c %%s -- %s" % shlex.quote(src), sudoable=True)
        out = to_text(res.get("stdout", "")).strip()
        if res.get("rc") != 0 or not out.isdigit():
            raise UserInputError(
                "%s is not a file on the builder (%s)" % (src, to_text(res.get("stderr", "")).strip()[-300:]),
                hint="Give the path of the built image on the builder",
                parameter="src",
            )
        return int(out)

    def check_image(self, python: str, src: str) -> None:
        """What DigitalOcean would refuse in the file (format, compression, size), read on the builder
        before anything goes to B2 (_digitalocean/_preflight.py, standard library only)."""
        source = source_of(_preflight) + IMAGE_CHECK
        answer = self.remote_json(python, source, {"path": src}, [])
        if answer.get("errors"):
            raise UserInputError(answer["errors"][0], hint="Check the builder", parameter="src")
        if answer.get("refused"):
            raise UserInputError("%s: %s" % (src, answer["refused"]), hint=answer.get("hint"), parameter="src")

    def run_remote(self, python: str, job: Dict[str, Any], secrets: list) -> Dict[str, Any]:
        """Run the builder's half with ``job`` (URLs and tokens) on its standard input; its answer."""
        return self.remote_json(python, source_of(_builder_parts), job, secrets)

    def remote_json(self, python: str, source: bytes, job: Dict[str, Any], secrets: list) -> Dict[str, Any]:
        """Run ``source`` with the builder's python, ``job`` on its standard input; its JSON answer."""
        payload = b"%d\n" % len(source) + source + json.dumps(job).encode() + b"\n"
        command = "%s -c %s" % (shlex.quote(python), shlex.quote(BOOTSTRAP))
        try:
            res = self._low_level_execute_command(command, sudoable=True, in_data=payload)
        except AnsibleConnectionFailure as exc:
            # a builder that died: a failure of this task (which the caller's rescue sees), after the clean-up
            text = redact(to_text(exc.message if hasattr(exc, "message") else exc)[-600:], secrets)
            return {"errors": ["the builder stopped answering: %s" % text]}
        lines = [line for line in to_text(res.get("stdout", "")).splitlines() if line.startswith("{")]
        if res.get("rc") != 0 or not lines:
            text = redact(to_text(res.get("stderr", "")).strip()[-600:] or "no answer", secrets)
            return {"errors": ["the builder stopped answering or its upload ended (rc %s): %s" % (res.get("rc"), text)]}
        return json.loads(lines[-1])


def source_of(module: Any) -> bytes:
    with open(module.__file__.replace(".pyc", ".py"), "rb") as handle:
        return handle.read()
