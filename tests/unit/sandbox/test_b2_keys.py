"""The B2 emulator's application keys, version shapes, lost answers and upload-URL faults.

Request handling without HTTP (as test_b2_api.py); the same code behind TLS and b2sdk is
tested by tests/integration/test_sandbox_b2.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
from pathlib import Path

import pytest
from requests.structures import CaseInsensitiveDict

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sandbox"))

from nfsandbox.b2 import PIPELINE_CAPABILITIES
from nfsandbox.b2.api import B2API, Request, Response
from nfsandbox.b2.faults import MUTATING_CALLS

BASE = "https://127.0.0.1:1"


@pytest.fixture
def api(tmp_path: Path) -> B2API:
    b2 = B2API(tmp_path / "b2", BASE)
    b2.store.create_bucket("public-bucket", "allPublic", fixture=True)
    b2.store.create_bucket("private-bucket", "allPrivate", fixture=True)
    return b2


def call(api: B2API, method: str, path: str, headers=None, body: bytes = b"") -> Response:
    hdrs = CaseInsensitiveDict(headers or {})
    if body:
        hdrs.setdefault("Content-Length", str(len(body)))
    return api.handle(Request(method, path, {}, hdrs, io.BytesIO(body), len(body)))


def authorize(api: B2API, key_id: str, secret: str, version: str = "v3") -> Response:
    basic = base64.b64encode(f"{key_id}:{secret}".encode()).decode()
    return call(api, "POST", f"/b2api/{version}/b2_authorize_account", {"Authorization": f"Basic {basic}"})


def token_of(api: B2API, key_id: str, secret: str) -> str:
    resp = authorize(api, key_id, secret)
    assert resp.status == 200, resp.payload
    return resp.payload["authorizationToken"]


def b2(api: B2API, token: str, name: str, version: str = "v3", **params) -> Response:
    return call(api, "POST", f"/b2api/{version}/{name}", {"Authorization": token}, json.dumps(params).encode())


def bucket_id(api: B2API, name: str) -> str:
    return api.store.bucket_by_name(name).id


def upload_with(api: B2API, target: dict, name: str, data: bytes) -> Response:
    headers = {
        "Authorization": target["authorizationToken"],
        "X-Bz-File-Name": name,
        "Content-Type": "b2/x-auto",
        "X-Bz-Content-Sha1": hashlib.sha1(data, usedforsecurity=False).hexdigest(),
    }
    return call(api, "POST", target["uploadUrl"][len(BASE) :], headers, data)


@pytest.fixture
def pipeline(api: B2API):
    """The sandbox's pipeline key: the collection's capabilities, the public bucket, nixforge/."""
    key = api.add_key("pipeline", PIPELINE_CAPABILITIES, [bucket_id(api, "public-bucket")], "nixforge/")
    return key, token_of(api, key.key_id, key.secret)


def unauthorized(resp: Response, *words: str) -> None:
    assert (resp.status, resp.payload["code"]) == (401, "unauthorized"), resp.payload
    for word in words:
        assert word in resp.payload["message"], resp.payload["message"]


# -- keys ---------------------------------------------------------------------------


def test_a_missing_capability_is_401_unauthorized_naming_it(api: B2API, pipeline) -> None:
    _key, token = pipeline
    public = bucket_id(api, "public-bucket")
    unauthorized(b2(api, token, "b2_get_file_info", fileId="4_zx"), "readFiles", "b2_get_file_info")
    unauthorized(
        b2(
            api,
            token,
            "b2_get_download_authorization",
            bucketId=public,
            fileNamePrefix="nixforge/x",
            validDurationInSeconds=60,
        ),
        "shareFiles",
    )
    unauthorized(b2(api, token, "b2_list_keys", accountId=api.account_id), "listKeys")
    unauthorized(
        b2(api, token, "b2_create_bucket", accountId=api.account_id, bucketName="newbucket", bucketType="allPrivate"),
        "writeBuckets",
    )


def test_the_bucket_restriction_holds_on_every_call(api: B2API, pipeline) -> None:
    _key, token = pipeline
    private = bucket_id(api, "private-bucket")
    unauthorized(b2(api, token, "b2_list_buckets", accountId=api.account_id), "bucketId or bucketName")
    unauthorized(b2(api, token, "b2_list_buckets", accountId=api.account_id, bucketName="private-bucket"), "restricted")
    listed = b2(api, token, "b2_list_buckets", accountId=api.account_id, bucketName="public-bucket")
    assert [b["bucketName"] for b in listed.payload["buckets"]] == ["public-bucket"]
    for name, params in (
        ("b2_get_upload_url", {"bucketId": private}),
        ("b2_list_file_versions", {"bucketId": private, "prefix": "nixforge/"}),
        ("b2_list_unfinished_large_files", {"bucketId": private, "namePrefix": "nixforge/"}),
        ("b2_start_large_file", {"bucketId": private, "fileName": "nixforge/x", "contentType": "b2/x-auto"}),
    ):
        unauthorized(b2(api, token, name, **params), "restricted")
    # a file of another bucket, by id: its bucket is checked too
    master = token_of(api, api.key_id, api.key)
    other = b2(api, master, "b2_start_large_file", bucketId=private, fileName="nixforge/y", contentType="b2/x-auto")
    unauthorized(b2(api, token, "b2_cancel_large_file", fileId=other.payload["fileId"]), "restricted")
    assert b2(api, master, "b2_cancel_large_file", fileId=other.payload["fileId"]).status == 200


def test_the_name_prefix_holds_for_names_and_list_prefixes(api: B2API, pipeline) -> None:
    _key, token = pipeline
    public = bucket_id(api, "public-bucket")
    unauthorized(b2(api, token, "b2_list_file_versions", bucketId=public), "nixforge/")
    unauthorized(b2(api, token, "b2_list_file_names", bucketId=public, prefix="other/"), "nixforge/")
    assert b2(api, token, "b2_list_file_versions", bucketId=public, prefix="nixforge/b1/").status == 200
    unauthorized(
        b2(api, token, "b2_start_large_file", bucketId=public, fileName="images/x", contentType="b2/x-auto"),
        "nixforge/",
    )
    target = b2(api, token, "b2_get_upload_url", bucketId=public).payload
    unauthorized(upload_with(api, target, "images/outside.img", b"data"), "nixforge/")
    target = b2(api, token, "b2_get_upload_url", bucketId=public).payload
    done = upload_with(api, target, "nixforge/b1/inside.img", b"data")
    assert done.status == 200, done.payload
    deleted = b2(api, token, "b2_delete_file_version", fileId=done.payload["fileId"], fileName="nixforge/b1/inside.img")
    assert deleted.status == 200


def test_keys_are_created_listed_used_and_deleted(api: B2API) -> None:
    master = token_of(api, api.key_id, api.key)
    private = bucket_id(api, "private-bucket")
    made = b2(
        api, master, "b2_create_key", accountId=api.account_id, keyName="share-only",
        capabilities=["shareFiles", "listBuckets"], bucketId=private, namePrefix="builds/",
    )  # fmt: skip
    assert made.status == 200, made.payload
    body = made.payload
    assert (body["bucketId"], body["namePrefix"], body["keyName"]) == (private, "builds/", "share-only")
    assert body["applicationKey"] and body["capabilities"] == ["shareFiles", "listBuckets"]
    assert [r["type"] for r in api.resources()] == ["b2_key"]  # made through the API: a resource
    listed = b2(api, master, "b2_list_keys", accountId=api.account_id).payload["keys"]
    assert body["applicationKeyId"] in [k["applicationKeyId"] for k in listed]
    assert all("applicationKey" not in k for k in listed)
    # v4 speaks bucketIds
    assert b2(api, master, "b2_list_keys", "v4", accountId=api.account_id).payload["keys"][-1]["bucketIds"] == [private]
    token = token_of(api, body["applicationKeyId"], body["applicationKey"])
    auth = b2(
        api,
        token,
        "b2_get_download_authorization",
        bucketId=private,
        fileNamePrefix="builds/a",
        validDurationInSeconds=60,
    )
    assert auth.status == 200, auth.payload
    gone = b2(api, master, "b2_delete_key", applicationKeyId=body["applicationKeyId"])
    assert gone.status == 200 and "applicationKey" not in gone.payload
    assert b2(api, token, "b2_list_buckets", accountId=api.account_id, bucketId=private).status == 401
    assert authorize(api, body["applicationKeyId"], body["applicationKey"]).status == 401
    assert api.resources() == []


def test_create_key_refuses_what_b2_refuses(api: B2API) -> None:
    master = token_of(api, api.key_id, api.key)
    base = {"accountId": api.account_id, "keyName": "k1", "capabilities": ["listFiles"]}
    for extra, word in (
        ({"capabilities": ["readEverything"]}, "unknown capabilities"),
        ({"namePrefix": "x/"}, "namePrefix"),
        ({"keyName": "bad name!"}, "keyName"),
        ({"bucketId": "nope"}, "bucketId"),
    ):
        resp = b2(api, master, "b2_create_key", **{**base, **extra})
        assert resp.status == 400 and word in resp.payload["message"], resp.payload
    fixture = next(k for k in api.keys.values() if k.fixture)
    assert b2(api, master, "b2_delete_key", applicationKeyId=fixture.key_id).status == 400


# -- version shapes -----------------------------------------------------------------


def test_authorize_answers_in_each_version_s_shape(api: B2API, pipeline) -> None:
    key, _token = pipeline
    v1 = authorize(api, key.key_id, key.secret, "v1").payload
    assert v1["minimumPartSize"] == v1["recommendedPartSize"] and v1["apiUrl"] == BASE
    assert v1["allowed"] == {
        "bucketId": bucket_id(api, "public-bucket"),
        "bucketName": "public-bucket",
        "capabilities": PIPELINE_CAPABILITIES,
        "namePrefix": "nixforge/",
    }
    assert "apiInfo" not in v1
    v2 = authorize(api, key.key_id, key.secret, "v2").payload
    assert "minimumPartSize" not in v2 and v2["allowed"]["bucketName"] == "public-bucket"
    v3 = authorize(api, key.key_id, key.secret, "v3").payload
    storage = v3["apiInfo"]["storageApi"]
    assert "apiUrl" not in v3 and "allowed" not in storage
    assert (storage["bucketName"], storage["namePrefix"], storage["infoType"]) == (
        "public-bucket",
        "nixforge/",
        "storageApi",
    )
    v4 = authorize(api, key.key_id, key.secret, "v4").payload["apiInfo"]["storageApi"]
    assert "bucketId" not in v4 and "infoType" not in v4
    assert v4["allowed"]["buckets"] == [{"id": bucket_id(api, "public-bucket"), "name": "public-bucket"}]
    several = api.add_key("two", ["listFiles"], [bucket_id(api, "public-bucket"), bucket_id(api, "private-bucket")])
    assert authorize(api, several.key_id, several.secret, "v3").status == 400
    assert authorize(api, several.key_id, several.secret, "v4").status == 200


def test_files_and_buckets_answer_in_each_version_s_shape(api: B2API) -> None:
    master = token_of(api, api.key_id, api.key)
    public = bucket_id(api, "public-bucket")
    target = b2(api, master, "b2_get_upload_url", "v1", bucketId=public).payload
    assert "/b2api/v1/b2_upload_file/" in target["uploadUrl"]
    v1_file = upload_with(api, target, "a/file", b"12345").payload
    assert v1_file["size"] == 5 and "fileRetention" not in v1_file and "legalHold" not in v1_file
    listed = b2(api, master, "b2_list_file_names", "v2", bucketId=public).payload["files"][0]
    assert "size" not in listed and listed["contentLength"] == 5 and "fileRetention" in listed
    hidden = b2(api, master, "b2_hide_file", "v1", bucketId=public, fileName="a/file").payload
    assert "bucketId" not in hidden and hidden["action"] == "hide"
    assert "bucketId" in b2(api, master, "b2_list_file_versions", "v2", bucketId=public).payload["files"][0]
    v1_bucket = b2(api, master, "b2_list_buckets", "v1", accountId=api.account_id).payload["buckets"][0]
    assert "fileLockConfiguration" not in v1_bucket and "defaultServerSideEncryption" not in v1_bucket
    v2_bucket = b2(api, master, "b2_list_buckets", "v2", accountId=api.account_id).payload["buckets"][0]
    assert "fileLockConfiguration" in v2_bucket


# -- faults -------------------------------------------------------------------------


def test_a_503_on_an_upload_invalidates_its_url_and_token(api: B2API) -> None:
    master = token_of(api, api.key_id, api.key)
    target = b2(api, master, "b2_get_upload_url", bucketId=bucket_id(api, "public-bucket")).payload
    api.faults.set({"service_unavailable": 1, "match": "^b2_upload_file$"})
    first = upload_with(api, target, "x/f", b"data")
    assert (first.status, first.payload["code"]) == (503, "service_unavailable")
    again = upload_with(api, target, "x/f", b"data")  # the client reuses the URL: B2 refuses it
    assert (again.status, again.payload["code"]) == (401, "bad_auth_token")
    assert api.faults.snapshot()["served"]["reused_upload_url"] == 1
    fresh = b2(api, master, "b2_get_upload_url", bucketId=bucket_id(api, "public-bucket")).payload
    assert upload_with(api, fresh, "x/f", b"data").status == 200
    # a 429 asked for by name on an upload call does not end the URL (B2 never sends it there)
    api.faults.set({"calls": {"b2_upload_file": {"rate_429": 1.0}}})
    assert upload_with(api, fresh, "x/g", b"data").status == 429
    api.faults.set({})
    assert upload_with(api, fresh, "x/g", b"data").status == 200


def test_a_lost_answer_is_a_500_after_the_call_was_carried_out(api: B2API) -> None:
    master = token_of(api, api.key_id, api.key)
    public = bucket_id(api, "public-bucket")
    started = b2(api, master, "b2_start_large_file", bucketId=public, fileName="big", contentType="b2/x-auto").payload
    part_target = b2(api, master, "b2_get_upload_part_url", fileId=started["fileId"]).payload
    sha1s = []
    for number, data in ((1, b"a" * 5_000_000), (2, b"b" * 10)):
        sha1 = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        headers = {"Authorization": part_target["authorizationToken"], "X-Bz-Part-Number": str(number),
                   "X-Bz-Content-Sha1": sha1}  # fmt: skip
        assert call(api, "POST", part_target["uploadUrl"][len(BASE) :], headers, data).status == 200
        sha1s.append(sha1)
    api.faults.set({"lost_answer": 1, "lost_answer_match": "^b2_finish_large_file$"})
    lost = b2(api, master, "b2_finish_large_file", fileId=started["fileId"], partSha1Array=sha1s)
    assert (lost.status, lost.payload["code"]) == (500, "internal_error")
    # carried out: the file is there, finished; finishing again is B2's "no active upload"
    info = b2(api, master, "b2_get_file_info", fileId=started["fileId"]).payload
    assert (info["action"], info["contentLength"], info["contentSha1"]) == ("upload", 5_000_010, "none")
    again = b2(api, master, "b2_finish_large_file", fileId=started["fileId"], partSha1Array=sha1s)
    assert again.status == 400 and "No active upload" in again.payload["message"]
    assert api.faults.snapshot()["served"]["lost_answer"] == 1


@pytest.mark.parametrize("name", MUTATING_CALLS)
def test_every_mutating_call_can_lose_its_answer_and_no_read_does(api: B2API, name: str) -> None:
    api.faults.set({"lost_answer_rate": 1.0})
    assert api.faults.lost(name) is True
    assert api.faults.lost("b2_list_file_versions") is False
    api.faults.set({"calls": {name: {"lost_answer_rate": 1.0}}})
    assert api.faults.lost(name) is True
    served = api.faults.snapshot()["served"]
    assert served["lost_answer"] == 1 and served["calls"][name] == {"lost_answer": 1}


def test_lost_answers_of_uploads_keys_and_deletes(api: B2API) -> None:
    master = token_of(api, api.key_id, api.key)
    public = bucket_id(api, "public-bucket")
    api.faults.set({"lost_answer": 3, "lost_answer_match": "^b2_(upload_file|create_key|delete_file_version)$"})
    target = b2(api, master, "b2_get_upload_url", bucketId=public).payload
    assert upload_with(api, target, "kept", b"x").status == 500
    [stored] = [r for r in api.resources() if r["type"] == "b2_file"]
    made = b2(api, master, "b2_create_key", accountId=api.account_id, keyName="k", capabilities=["listFiles"])
    assert made.status == 500 and any(r["type"] == "b2_key" for r in api.resources())
    assert b2(api, master, "b2_delete_file_version", fileId=stored["id"], fileName="kept").status == 500
    assert [r["type"] for r in api.resources()] == ["b2_key"]
    with pytest.raises(ValueError, match="lost_answer_match"):
        api.faults.set({"lost_answer_match": "("})
