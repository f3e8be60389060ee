"""Application keys of the B2 emulator: capabilities, a bucket restriction, a name prefix.

As on B2, every call made with an account authorization token is allowed only when the
key that token came from has the call's capability (`CALL_CAPABILITY`), and, for a key
restricted to buckets and/or a name prefix, only on those buckets and names. A refusal
is B2's `401 unauthorized`; the message names what is missing (the capability, the bucket
or the prefix), so that a client can tell its user which key to make.

Keys are made at start (the fixture keys the sandbox publishes: the master key and the
least-privilege keys of the pipelines and the reaper) or through `b2_create_key`;
`b2_list_keys` and `b2_delete_key` see both kinds (fixture keys cannot be deleted, so
that one test cannot take the sandbox's credentials away from the next).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from .store import B2Error, Bucket, bad_request

CAPABILITIES = [
    "listKeys", "writeKeys", "deleteKeys", "listBuckets", "listAllBucketNames", "readBuckets", "writeBuckets",
    "deleteBuckets", "readBucketEncryption", "writeBucketEncryption", "readBucketRetentions",
    "writeBucketRetentions", "readFileRetentions", "writeFileRetentions", "readFileLegalHolds",
    "writeFileLegalHolds", "readBucketReplications", "writeBucketReplications", "bypassGovernance", "listFiles",
    "readFiles", "shareFiles", "writeFiles", "deleteFiles", "readBucketNotifications", "writeBucketNotifications",
]  # fmt: skip

# The capability each call needs (B2's documentation of each call says "The token must
# have the ... capability"). Downloads of private files need readFiles.
CALL_CAPABILITY = {
    "b2_list_buckets": "listBuckets",
    "b2_create_bucket": "writeBuckets",
    "b2_update_bucket": "writeBuckets",
    "b2_delete_bucket": "deleteBuckets",
    "b2_get_upload_url": "writeFiles",
    "b2_get_upload_part_url": "writeFiles",
    "b2_start_large_file": "writeFiles",
    "b2_finish_large_file": "writeFiles",
    "b2_cancel_large_file": "writeFiles",
    "b2_list_parts": "writeFiles",
    "b2_list_unfinished_large_files": "listFiles",
    "b2_list_file_names": "listFiles",
    "b2_list_file_versions": "listFiles",
    "b2_hide_file": "writeFiles",
    "b2_delete_file_version": "deleteFiles",
    "b2_get_file_info": "readFiles",
    "b2_get_download_authorization": "shareFiles",
    "b2_download_file_by_name": "readFiles",
    "b2_download_file_by_id": "readFiles",
    "b2_create_key": "writeKeys",
    "b2_list_keys": "listKeys",
    "b2_delete_key": "deleteKeys",
}
MAX_KEY_DURATION = 1000 * 24 * 3600  # B2: at most 1000 days
KEY_NAME_RE = re.compile(r"[A-Za-z0-9-]{1,100}")


@dataclass
class AppKey:
    key_id: str
    secret: str
    name: str
    capabilities: list[str]
    bucket_ids: list[str] | None = None  # None: every bucket
    name_prefix: str | None = None
    expires_ms: int | None = None
    fixture: bool = False

    def expired(self) -> bool:
        return self.expires_ms is not None and time.time() * 1000 > self.expires_ms

    def lacks(self, capability: str, call: str) -> None:
        """401 unauthorized naming the capability when the key does not have it."""
        if capability not in self.capabilities:
            raise B2Error(
                401,
                "unauthorized",
                f"application key {self.name!r} does not have the {capability} capability that {call} needs",
            )

    def bucket_allowed(self, bucket: Bucket | None, call: str) -> None:
        if self.bucket_ids is None or (bucket is not None and bucket.id in self.bucket_ids):
            return
        raise B2Error(
            401, "unauthorized", f"application key {self.name!r} is not allowed {call} on this bucket (restricted)"
        )

    def name_allowed(self, name: str | None, call: str, what: str = "file name") -> None:
        """Names (and list prefixes) must start with the key's name prefix."""
        prefix = self.name_prefix
        if prefix and not (name or "").startswith(prefix):
            raise B2Error(
                401,
                "unauthorized",
                f"application key {self.name!r} is restricted to names starting with {prefix!r}: "
                f"{call} with {what} {name or ''!r} is not allowed",
            )

    def view(self, version: str, with_secret: bool = False) -> dict[str, Any]:
        """The key as b2_create_key / b2_list_keys / b2_delete_key answer it (v4: bucketIds)."""
        out: dict[str, Any] = {
            "keyName": self.name,
            "applicationKeyId": self.key_id,
            "capabilities": list(self.capabilities),
            "expirationTimestamp": self.expires_ms,
            "namePrefix": self.name_prefix,
            "options": ["s3"],
        }
        if version == "v4":
            out["bucketIds"] = list(self.bucket_ids) if self.bucket_ids is not None else None
        else:
            out["bucketId"] = self.bucket_ids[0] if self.bucket_ids else None
        if with_secret:
            out["applicationKey"] = self.secret
        return out


def new_key(
    account_id: str,
    serial: int,
    name: str,
    capabilities: list[str],
    bucket_ids: list[str] | None = None,
    name_prefix: str | None = None,
    expires_ms: int | None = None,
    fixture: bool = False,
) -> AppKey:
    key_id = f"00{account_id}{serial:010d}"
    secret = "K00" + secrets.token_urlsafe(24)[:28]
    return AppKey(key_id, secret, name, list(capabilities), bucket_ids, name_prefix, expires_ms, fixture)


def parse_create_key(params: dict[str, Any], version: str, buckets: dict[str, Bucket]) -> dict[str, Any]:
    """b2_create_key's parameters checked as B2 checks them (400 bad_request naming the field)."""
    name = params.get("keyName")
    if not isinstance(name, str) or not KEY_NAME_RE.fullmatch(name):
        raise bad_request(f"keyName must be 1-100 letters, digits and '-', not {name!r}")
    capabilities = params.get("capabilities")
    if not isinstance(capabilities, list) or not capabilities:
        raise bad_request("capabilities must be a non-empty list")
    unknown = [c for c in capabilities if c not in CAPABILITIES]
    if unknown:
        raise bad_request(f"unknown capabilities: {unknown}")
    if version == "v4":
        raw_ids = params.get("bucketIds")
        if raw_ids is not None and (not isinstance(raw_ids, list) or not raw_ids):
            raise bad_request("bucketIds must be a non-empty list")
    else:
        raw_ids = [params["bucketId"]] if params.get("bucketId") else None
    for bucket_id in raw_ids or []:
        if bucket_id not in buckets:
            raise bad_request(f"Invalid bucketId: {bucket_id}", "bad_bucket_id")
    prefix = params.get("namePrefix")
    if prefix is not None and (not isinstance(prefix, str) or raw_ids is None):
        raise bad_request("namePrefix may only be set with a bucket restriction (bucketId / bucketIds)")
    duration = params.get("validDurationInSeconds")
    expires = None
    if duration is not None:
        if not isinstance(duration, int) or not 1 <= duration <= MAX_KEY_DURATION:
            raise bad_request(f"validDurationInSeconds must be within 1..{MAX_KEY_DURATION}")
        expires = int(time.time() * 1000) + duration * 1000
    return {
        "name": name,
        "capabilities": capabilities,
        "bucket_ids": raw_ids,
        "name_prefix": prefix,
        "expires_ms": expires,
    }
