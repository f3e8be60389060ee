"""The B2 emulator's request handling without HTTP: auth, tokens, errors, downloads.

Requests are `nfsandbox.b2.api.Request` objects with in-memory bodies; the same code
behind a real socket and b2sdk is tested by tests/integration/test_sandbox_b2.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import threading
import time
from pathlib import Path

import pytest
from requests.structures import CaseInsensitiveDict

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sandbox"))

from nfsandbox.b2.api import B2API, Paced, Request, Response
from nfsandbox.testing import HANG_GUARD

BASE = "http://127.0.0.1:1"


@pytest.fixture
def api(tmp_path: Path) -> B2API:
    b2 = B2API(tmp_path / "b2", BASE)
    b2.store.create_bucket("public-bucket", "allPublic", fixture=True)
    b2.store.create_bucket("private-bucket", "allPrivate", fixture=True)
    return b2


def call(api: B2API, method: str, path: str, headers=None, body: bytes = b"", query=None) -> Response:
    hdrs = CaseInsensitiveDict(headers or {})
    if body:
        hdrs.setdefault("Content-Length", str(len(body)))
    return api.handle(Request(method, path, query or {}, hdrs, io.BytesIO(body), len(body)))


def authorize(api: B2API, version: str = "v4") -> dict:
    basic = base64.b64encode(f"{api.key_id}:{api.key}".encode()).decode()
    resp = call(api, "POST", f"/b2api/{version}/b2_authorize_account", {"Authorization": f"Basic {basic}"})
    assert resp.status == 200, resp.payload
    return resp.payload


def api_call(api: B2API, token: str, name: str, **params) -> Response:
    return call(api, "POST", f"/b2api/v4/{name}", {"Authorization": token}, json.dumps(params).encode())


def bucket_id(api: B2API, name: str) -> str:
    return api.store.bucket_by_name(name).id


def upload(api: B2API, token: str, bucket: str, name: str, data: bytes, info=None) -> Response:
    target = api_call(api, token, "b2_get_upload_url", bucketId=bucket_id(api, bucket)).payload
    headers = {
        "Authorization": target["authorizationToken"],
        "X-Bz-File-Name": name,
        "Content-Type": "b2/x-auto",
        "X-Bz-Content-Sha1": hashlib.sha1(data, usedforsecurity=False).hexdigest(),
        **{f"X-Bz-Info-{k}": v for k, v in (info or {}).items()},
    }
    return call(api, "POST", target["uploadUrl"][len(BASE) :], headers, data)


def test_authorize_answers_the_v4_shape_b2sdk_reads(api: B2API) -> None:
    body = authorize(api)
    storage = body["apiInfo"]["storageApi"]
    assert storage["apiUrl"] == storage["downloadUrl"] == BASE
    assert storage["recommendedPartSize"] == 100_000_000
    assert storage["absoluteMinimumPartSize"] == 5_000_000
    assert set(storage["allowed"]) == {"buckets", "capabilities", "namePrefix"}
    assert "writeFiles" in storage["allowed"]["capabilities"]
    assert authorize(api, "v2")["apiUrl"] == BASE


def test_bad_key_and_bad_tokens_get_b2_error_bodies(api: B2API) -> None:
    basic = base64.b64encode(f"{api.key_id}:wrong".encode()).decode()
    resp = call(api, "POST", "/b2api/v4/b2_authorize_account", {"Authorization": f"Basic {basic}"})
    assert (resp.status, resp.payload["code"]) == (401, "unauthorized")
    assert set(resp.payload) == {"status", "code", "message"}
    resp = api_call(api, "4_nonsense", "b2_list_buckets", accountId=api.account_id)
    assert (resp.status, resp.payload["code"]) == (401, "bad_auth_token")
    resp = call(api, "POST", "/b2api/v4/b2_copy_file", {"Authorization": authorize(api)["authorizationToken"]})
    assert (resp.status, resp.payload["code"]) == (400, "bad_request")


def test_token_ttl_knob_expires_tokens_and_counts(api: B2API) -> None:
    token = authorize(api)["authorizationToken"]
    api.faults.set({"token_ttl": 0.05})
    time.sleep(0.1)
    resp = api_call(api, token, "b2_list_buckets", accountId=api.account_id)
    assert (resp.status, resp.payload["code"]) == (401, "expired_auth_token")
    assert api.faults.snapshot()["served"]["expired_auth_token"] == 1
    api.faults.set({})
    assert api_call(api, token, "b2_list_buckets", accountId=api.account_id).status == 200


def test_faults_answer_with_retry_after_after_the_token_check(api: B2API) -> None:
    token = authorize(api)["authorizationToken"]
    api.faults.set({"throttle": 1, "retry_after": 3})
    assert api_call(api, "4_bad", "b2_list_buckets", accountId=api.account_id).status == 401
    resp = api_call(api, token, "b2_list_buckets", accountId=api.account_id)
    assert (resp.status, resp.payload["code"], resp.headers["Retry-After"]) == (429, "too_many_requests", "3")
    assert api_call(api, token, "b2_list_buckets", accountId=api.account_id).status == 200


def test_upload_stores_file_info_and_serves_download_headers(api: B2API) -> None:
    token = authorize(api)["authorizationToken"]
    resp = upload(api, token, "public-bucket", "dir/img%20one.qcow2", b"data" * 10, {"nixforge-build-id": "b%2F1"})
    assert resp.status == 200, resp.payload
    assert resp.payload["fileName"] == "dir/img one.qcow2"
    assert resp.payload["fileInfo"] == {"nixforge-build-id": "b/1"}
    head = call(api, "HEAD", "/file/public-bucket/dir/img%20one.qcow2")
    assert head.status == 200 and head.length == 40
    assert head.headers["x-bz-info-nixforge-build-id"] == "b/1"
    assert head.headers["x-bz-content-sha1"] == hashlib.sha1(b"data" * 10, usedforsecurity=False).hexdigest()
    ranged = call(api, "GET", "/file/public-bucket/dir/img%20one.qcow2", {"Range": "bytes=4-7"})
    assert ranged.status == 206 and ranged.headers["Content-Range"] == "bytes 4-7/40" and ranged.length == 4
    assert call(api, "GET", "/file/public-bucket/nothing").status == 404


def test_upload_refuses_bad_names_and_oversized_file_info(api: B2API) -> None:
    token = authorize(api)["authorizationToken"]
    assert upload(api, token, "public-bucket", "a//b", b"x").payload["code"] == "bad_request"
    too_much = {f"k{i}": "v" * 800 for i in range(9)}
    resp = upload(api, token, "public-bucket", "fat-info", b"x", too_much)
    assert resp.status == 400 and "more than 7000" in resp.payload["message"]
    eleven = {f"k{i}": "v" for i in range(11)}
    assert "too many file info" in upload(api, token, "public-bucket", "many", b"x", eleven).payload["message"]
    assert api.resources() == []


def test_upload_token_is_bound_to_its_url(api: B2API) -> None:
    token = authorize(api)["authorizationToken"]
    target = api_call(api, token, "b2_get_upload_url", bucketId=bucket_id(api, "public-bucket")).payload
    other = api_call(api, token, "b2_get_upload_url", bucketId=bucket_id(api, "private-bucket")).payload
    data = b"x"
    headers = {
        "Authorization": other["authorizationToken"],
        "X-Bz-File-Name": "f",
        "X-Bz-Content-Sha1": "do_not_verify",
    }
    resp = call(api, "POST", target["uploadUrl"][len(BASE) :], headers, data)
    assert (resp.status, resp.payload["code"]) == (401, "bad_auth_token")


def test_private_downloads_need_a_covering_token(api: B2API) -> None:
    token = authorize(api)["authorizationToken"]
    assert upload(api, token, "private-bucket", "builds/a.img", b"secret").status == 200
    path = "/file/private-bucket/builds/a.img"
    assert call(api, "GET", path).status == 401
    assert call(api, "GET", path, {"Authorization": token}).status == 200
    pid = bucket_id(api, "private-bucket")
    good = api_call(
        api, token, "b2_get_download_authorization", bucketId=pid, fileNamePrefix="builds/", validDurationInSeconds=60
    ).payload["authorizationToken"]
    other = api_call(
        api, token, "b2_get_download_authorization", bucketId=pid, fileNamePrefix="logs/", validDurationInSeconds=60
    ).payload["authorizationToken"]
    assert call(api, "GET", path, query={"Authorization": [good]}).status == 200
    assert call(api, "GET", path, {"Authorization": good}).status == 200
    assert call(api, "GET", path, {"Authorization": other}).status == 401
    too_long = api_call(
        api, token, "b2_get_download_authorization", bucketId=pid, fileNamePrefix="", validDurationInSeconds=604801
    )
    assert too_long.status == 400


def test_download_authorization_expires(api: B2API) -> None:
    token = authorize(api)["authorizationToken"]
    upload(api, token, "private-bucket", "x.img", b"1")
    pid = bucket_id(api, "private-bucket")
    short = api_call(
        api, token, "b2_get_download_authorization", bucketId=pid, fileNamePrefix="", validDurationInSeconds=1
    ).payload["authorizationToken"]
    api.tokens[short].issued -= 2
    resp = call(api, "GET", "/file/private-bucket/x.img", {"Authorization": short})
    assert (resp.status, resp.payload["code"]) == (401, "expired_auth_token")


def test_resources_list_versions_and_unfinished_then_reset_empties(api: B2API) -> None:
    token = authorize(api)["authorizationToken"]
    upload(api, token, "public-bucket", "a", b"1", {"nixforge-build-id": "b1"})
    started = api_call(
        api, token, "b2_start_large_file", bucketId=bucket_id(api, "public-bucket"), fileName="big",
        contentType="b2/x-auto", fileInfo={"nixforge-pipeline": "p"},
    )  # fmt: skip
    assert started.status == 200
    made = api_call(
        api, token, "b2_create_bucket", accountId=api.account_id, bucketName="made-here", bucketType="allPrivate"
    )
    assert made.status == 200
    kinds = sorted((r["type"], r.get("name")) for r in api.resources())
    assert kinds == [("b2_bucket", "made-here"), ("b2_file", "a"), ("b2_large_file", "big")]
    tags = {r["name"]: r.get("tags") for r in api.resources()}
    assert tags["a"] == {"nixforge-build-id": "b1"} and tags["big"] == {"nixforge-pipeline": "p"}
    api.reset()
    assert api.resources() == []
    assert {b.name for b in api.store.buckets.values()} == {"public-bucket", "private-bucket"}


class BlockingBody(io.BytesIO):
    """A body whose reading waits until the test lets it go on."""

    def __init__(self, data: bytes, gate) -> None:
        super().__init__(data)
        self.gate = gate

    def readinto(self, buffer) -> int:
        self.gate.wait(10)
        return super().readinto(buffer)


def test_an_upload_token_serves_one_upload_at_a_time(api: B2API) -> None:
    token = authorize(api)["authorizationToken"]
    target = api_call(api, token, "b2_get_upload_url", bucketId=bucket_id(api, "public-bucket")).payload
    data = b"slow body"
    headers = CaseInsensitiveDict(
        {
            "Authorization": target["authorizationToken"],
            "X-Bz-File-Name": "slow",
            "X-Bz-Content-Sha1": "do_not_verify",
            "Content-Length": str(len(data)),
        }
    )
    path = target["uploadUrl"][len(BASE) :]
    gate = threading.Event()
    results = []
    first = threading.Thread(
        target=lambda: results.append(
            api.handle(Request("POST", path, {}, headers, BlockingBody(data, gate), len(data)))
        )
    )
    first.start()
    deadline = time.time() + HANG_GUARD
    while not api.tokens[target["authorizationToken"]].busy:
        assert time.time() < deadline, "the first upload never took the token"
        time.sleep(0.01)
    second = api.handle(Request("POST", path, {}, headers, io.BytesIO(data), len(data)))
    gate.set()
    first.join(10)
    assert (second.status, second.payload["code"]) == (400, "auth_token_limit")
    assert second.payload["message"] == f"more than one upload using auth token {target['authorizationToken']}"
    assert results[0].status == 200
    assert call(api, "POST", path, headers, data).status == 200  # free again afterwards


def test_paced_body_is_read_no_faster_than_the_rate() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    body = Paced(io.BytesIO(b"x" * 3000), 1000.0, clock=lambda: now[0], sleep=sleep)
    assert body.read(1000) == b"x" * 1000  # read at once: 1 s early for 1000 B/s
    now[0] += 0.25  # the reader spent a quarter second on its own
    assert body.readinto(memoryview(bytearray(1000))) == 1000
    assert body.read() == b"x" * 1000
    assert slept == [1.0, 0.75, 1.0]
    assert body.read(10) == b"" and slept == [1.0, 0.75, 1.0]


def test_upload_rate_knob_paces_uploads(api: B2API) -> None:
    token = authorize(api)["authorizationToken"]
    data = b"r" * 300_000
    api.faults.set({"upload_rate": 1.0})  # 1 MB/s: 0.3 s at least for 300 kB
    started = time.monotonic()
    assert upload(api, token, "public-bucket", "paced.bin", data).status == 200
    assert time.monotonic() - started >= 0.3
    api.faults.set({})
    started = time.monotonic()
    assert upload(api, token, "public-bucket", "fast.bin", data).status == 200
    assert time.monotonic() - started < 0.3
