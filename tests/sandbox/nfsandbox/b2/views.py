"""The B2 emulator's answers in the shape of each API version (/b2api/v1 ... /b2api/v4).

B2 keeps every old version working and answers each in its own shape; what differs is
what its version history documents:

- v1: `b2_authorize_account` is flat (`apiUrl`, `downloadUrl`, ... at the top) with the
  deprecated `minimumPartSize` and `allowed: {bucketId, bucketName, capabilities,
  namePrefix}`; file entries carry the old `size` next to `contentLength` and nothing of
  Object Lock or replication; buckets have no encryption, lock or replication settings;
  `b2_hide_file` answers without `bucketId`.
- v2: as v1 without `minimumPartSize` and `size`; files and buckets gain the Object
  Lock, encryption and replication fields.
- v3: `b2_authorize_account` is grouped by API suite: `apiInfo.storageApi` holds the
  URLs, part sizes, `infoType` and the key's `bucketId`, `bucketName`, `capabilities`,
  `namePrefix`; `applicationKeyExpirationTimestamp` at the top.
- v4: `apiInfo.storageApi.allowed: {buckets: [{id, name}], capabilities, namePrefix}`
  replaces the single bucket and `infoType` (keys may name several buckets);
  `b2_create_key` / `b2_list_keys` / `b2_delete_key` speak `bucketIds` instead of `bucketId`.
"""

from __future__ import annotations

from typing import Any

from .keys import AppKey
from .store import MIN_PART_SIZE, RECOMMENDED_PART_SIZE, B2Error, Bucket, FileVersion

VERSIONS = ("v1", "v2", "v3", "v4")


def authorize_view(
    version: str, account_id: str, token: str, key: AppKey, base_url: str, buckets: dict[str, Bucket]
) -> dict[str, Any]:
    urls = {
        "apiUrl": base_url,
        "downloadUrl": base_url,
        "s3ApiUrl": base_url,  # no S3 API here; b2sdk only stores it
        "recommendedPartSize": RECOMMENDED_PART_SIZE,
        "absoluteMinimumPartSize": MIN_PART_SIZE,
    }
    allowed_buckets = None
    if key.bucket_ids is not None:
        allowed_buckets = [{"id": b, "name": buckets[b].name if b in buckets else None} for b in key.bucket_ids]
    if version in ("v1", "v2", "v3") and allowed_buckets is not None and len(allowed_buckets) > 1:
        raise B2Error(400, "bad_request", f"a key restricted to several buckets needs API v4, not {version}")
    first = allowed_buckets[0] if allowed_buckets else {"id": None, "name": None}
    single = {"bucketId": first["id"], "bucketName": first["name"]}
    restrictions = {"capabilities": list(key.capabilities), "namePrefix": key.name_prefix}
    if version in ("v1", "v2"):
        body = {"accountId": account_id, "authorizationToken": token, **urls, "allowed": {**single, **restrictions}}
        if version == "v1":
            body["minimumPartSize"] = RECOMMENDED_PART_SIZE  # deprecated: always the recommended size
        return body
    if version == "v3":
        storage = {**urls, **single, **restrictions, "infoType": "storageApi"}
    else:
        storage = {**urls, "allowed": {**restrictions, "buckets": allowed_buckets}}
    return {
        "accountId": account_id,
        "authorizationToken": token,
        "apiInfo": {"storageApi": storage},
        "applicationKeyExpirationTimestamp": key.expires_ms,
    }


def bucket_view(version: str, account_id: str, bucket: Bucket) -> dict[str, Any]:
    view: dict[str, Any] = {
        "accountId": account_id,
        "bucketId": bucket.id,
        "bucketName": bucket.name,
        "bucketType": bucket.type,
        "bucketInfo": dict(bucket.info),
        "corsRules": [],
        "lifecycleRules": [],
        "options": ["s3"],
        "revision": bucket.revision,
    }
    if version == "v1":
        return view
    view["defaultServerSideEncryption"] = {"isClientAuthorizedToRead": True, "value": {"mode": None}}
    view["fileLockConfiguration"] = {
        "isClientAuthorizedToRead": True,
        "value": {"defaultRetention": {"mode": None, "period": None}, "isFileLockEnabled": False},
    }
    view["replicationConfiguration"] = {"isClientAuthorizedToRead": True, "value": None}
    return view


def file_view(version: str, account_id: str, file: FileVersion) -> dict[str, Any]:
    view: dict[str, Any] = {
        "accountId": account_id,
        "action": file.action,
        "bucketId": file.bucket_id,
        "contentLength": file.size,
        "contentSha1": file.sha1 if file.action != "hide" else None,
        "contentMd5": None,
        "contentType": file.content_type,
        "fileId": file.id,
        "fileInfo": dict(file.info),
        "fileName": file.name,
        "uploadTimestamp": file.uploaded,
    }
    if version == "v1":
        view["size"] = file.size  # the old name of contentLength, gone in v2
        if file.action == "hide":
            del view["bucketId"]
        return view
    view["replicationStatus"] = None
    view["serverSideEncryption"] = {"mode": None}
    if file.action != "hide":
        no_retention = {"mode": None, "retainUntilTimestamp": None}
        view["fileRetention"] = {"isClientAuthorizedToRead": True, "value": no_retention}
        view["legalHold"] = {"isClientAuthorizedToRead": True, "value": None}
    return view


def folder_view(version: str, name: str) -> dict[str, Any]:
    view = {"action": "folder", "fileId": None, "fileName": name, "contentLength": 0, "contentSha1": None,
            "contentType": None, "fileInfo": {}, "uploadTimestamp": 0}  # fmt: skip
    if version == "v1":
        view["size"] = 0
    return view
