# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: the controller's half of b2_builder_upload (not an API).
"""The controller's half of an upload that the builder sends to B2 itself.

The controller holds the application key and makes every call that needs it: it starts
the large file (with the file info: build identity and the sha256 it recorded), asks for
upload URLs (``b2_get_upload_part_url``, or ``b2_get_upload_url`` for a file of one
request) and hands only those, with their tokens, to the builder (``run_remote``, the
action plugin's channel to ``_builder_parts.py``). It gives more rounds of fresh URLs for
parts the builder could not place, checks the sha256 the builder computed against the
recorded one, then finishes the file with the parts' SHA-1s (a lost answer to the finish
is resolved by asking for the file, ``_b2_upload.Uploader.finish``). On any failure (the
builder died, a part was refused, the sha256 differs) the large file is cancelled and
whatever a lost answer created is deleted: nothing is left.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

from ansible_collections.nixforge.images.plugins.module_utils._b2._client import B2Client, is_retryable_upload_error
from ansible_collections.nixforge.images.plugins.module_utils._b2._upload import CONTENT_TYPE, Uploader
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError, UserInputError, redact

RemoteRun = Callable[[Dict[str, Any]], Dict[str, Any]]
SPARE_GRANTS = 2  # URLs beyond one per thread: a retired URL is replaced without a new round


class DirectUpload:
    """One upload of ``size`` bytes at ``src`` on the builder to ``name`` in ``bucket``."""

    def __init__(self, client: B2Client, bucket: Any, run_remote: RemoteRun, settings: Dict[str, Any]) -> None:
        self.client = client
        self.bucket = bucket
        self.run_remote = run_remote
        self.settings = settings  # src, size, name, info, sha256, part_size, threads, rounds, timeout, cadata
        self.file_id: Optional[str] = None
        self.stats: Dict[str, Any] = {"rounds": 0, "attempts": 0, "retired": 0, "notes": [], "parts": 0}
        self.finish_recovered = False

    def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        if kw.pop("upload", False):
            kw["classify"] = is_retryable_upload_error
        kw.setdefault("needs", "writeFiles")
        return self.client.call(fn, *args, **kw)

    def grant(self, fn: Callable[..., Any], target: str) -> List[str]:
        """One upload URL and its token; the token is masked in every message from now on."""
        answer = self.call(fn, target, what="Getting an upload URL for %s" % self.settings["name"])
        self.client.add_secret(answer["authorizationToken"])
        return [answer["uploadUrl"], answer["authorizationToken"]]

    def grants(self, fn: Callable[..., Any], target: str, count: int) -> List[List[str]]:
        return [self.grant(fn, target) for _grant in range(count)]

    def job(self, kind: str, grants: List[List[str]], **extra: Any) -> Dict[str, Any]:
        s = self.settings
        job = dict(kind=kind, path=s["src"], size=s["size"], grants=grants, threads=s["threads"])
        job.update(timeout=s["timeout"], cadata=s.get("cadata") or "", attempts=s.get("attempts", 5))
        job.update(extra)
        return job

    def remote(self, job: Dict[str, Any]) -> Dict[str, Any]:
        self.stats["rounds"] += 1
        answer = self.run_remote(job)
        self.stats["attempts"] += int(answer.get("attempts") or 0)
        self.stats["retired"] += int(answer.get("retired") or 0)
        self.stats["notes"] += [self.client_redact(n) for n in answer.get("notes") or []]
        if answer.get("errors"):
            raise ProviderError(
                "the builder's upload failed: %s" % self.client_redact("; ".join(answer["errors"])),
                hint="Nothing was kept in B2; run again",
                what="Uploading %s from the builder" % self.settings["src"],
            )
        return answer

    def client_redact(self, text: str) -> str:
        return redact(text, self.client.secrets)

    def marks(self) -> Dict[str, str]:
        """File info that only this build's upload of these bytes carries."""
        return {k: v for k, v in self.settings["info"].items() if k in ("nixforge-build-id", "sha256")}

    def check_sha256(self, actual: Optional[str]) -> None:
        expected = self.settings["sha256"]
        if actual != expected:
            raise UserInputError(
                "%s on the builder has sha256 %s, not %s (the one recorded when it was built)"
                % (self.settings["src"], actual, expected),
                hint="The file changed after it was built, or 'sha256' belongs to another file; nothing was kept in B2",
                parameter="sha256",
            )

    def upload(self) -> Dict[str, Any]:
        started = time.time()
        try:
            if self.settings["size"] > self.settings["part_size"]:
                entry = self.large()
            else:
                entry = self.small()
        except BaseException:
            self.clean()
            raise
        # versions a retried request made although its first answer was lost
        before = self.settings.get("before") or set()
        self.client.remove_new(self.bucket, self.settings["name"], before, self.marks(), keep=entry.get("fileId"))
        self.stats["seconds"] = round(time.time() - started, 3)
        return entry

    def small(self) -> Dict[str, Any]:
        s = self.settings
        session = self.client.api.session
        grants = self.grants(session.get_upload_url, self.bucket.id_, 1 + SPARE_GRANTS)
        extra = dict(
            name=s["name"], content_type=CONTENT_TYPE, info=s["info"], sha256=True, expected_sha256=s["sha256"]
        )
        answer = self.remote(self.job("small", grants, threads=1, **extra))
        self.check_sha256(answer.get("sha256"))
        self.stats["parts"] = 1
        if not answer.get("file"):
            raise ProviderError(
                "no upload URL was left for the file (%s)" % "; ".join(self.stats["notes"][-3:]),
                hint="B2 kept refusing the upload; run again later",
                what="Uploading %s from the builder" % s["src"],
            )
        return dict(answer["file"])

    def large(self) -> Dict[str, Any]:
        s = self.settings
        session = self.client.api.session
        started = self.call(
            session.start_large_file,
            self.bucket.id_,
            s["name"],
            CONTENT_TYPE,
            dict(s["info"]),
            what="Starting %s" % s["name"],
        )
        self.file_id = started["fileId"]
        size, step = s["size"], s["part_size"]
        parts = [[n + 1, offset, min(step, size - offset)] for n, offset in enumerate(range(0, size, step))]
        self.stats["parts"] = len(parts)
        sha1s: Dict[int, str] = {}
        sha256: Optional[str] = None
        todo = parts
        while todo:
            if self.stats["rounds"] >= s["rounds"]:
                raise ProviderError(
                    "parts %s found no upload URL B2 took after %d rounds (%s)"
                    % (", ".join(str(p[0]) for p in todo), s["rounds"], "; ".join(self.stats["notes"][-3:])),
                    hint="B2 kept ending upload URLs; run again later (the unfinished file was cancelled)",
                    what="Uploading %s from the builder" % s["src"],
                )
            count = min(s["threads"], len(todo)) + SPARE_GRANTS
            grants = self.grants(session.get_upload_part_url, self.file_id, count)
            answer = self.remote(self.job("large", grants, parts=todo, sha256=sha256 is None))
            sha256 = answer.get("sha256") if sha256 is None else sha256
            sha1s.update({int(k): v for k, v in (answer.get("sha1s") or {}).items()})
            todo = [p for p in parts if p[0] not in sha1s]
        self.check_sha256(sha256)
        return self.finish([sha1s[p[0]] for p in parts])

    def finish(self, sha1s: List[str]) -> Dict[str, Any]:
        s = self.settings
        engine = Uploader(self.client.api.session, self.call, s["threads"])
        entry = engine.finish(self.bucket.id_, str(self.file_id), s["name"], s["size"], sha1s, s["info"])
        self.finish_recovered = engine.finish_recovered
        self.file_id = None  # finished: nothing to cancel any more
        return entry

    def clean(self) -> None:
        """Cancel the unfinished large file and delete what lost answers created (best effort:
        the upload's own error is what the caller reports; the reaper finds the rest)."""
        name = self.settings["name"]
        try:
            if self.file_id is not None:
                self.client.cancel_large_file(self.bucket, self.file_id, name)
                self.file_id = None
            self.client.remove_new(self.bucket, name, self.settings.get("before") or set(), self.marks())
        except Exception as exc:  # noqa: BLE001
            self.stats["notes"].append("could not clean up %s: %s" % (name, self.client_redact(str(exc))))
