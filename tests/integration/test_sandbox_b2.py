"""The sandbox's Backblaze B2, driven with b2sdk 2.x (and plain requests for raw HTTP).

Every test starts and ends with no B2 resource in `sandboxctl resources --json`; the
fixture buckets are not resources. Faults are set through the control API and their
served counters read back from `GET /faults/b2`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import requests
from b2sdk.v2 import B2Api, InMemoryAccountInfo, UploadSourceLocalFile
from b2sdk.v2.exception import B2Error, BadRequest, FileNotPresent, RestrictedBucket, Unauthorized
from nfsandbox.b2.testing import B2Sandbox
from nfsandbox.digitalocean.testing import DOSandbox, qcow2_image
from nfsandbox.testing import sandbox_missing

pytestmark = [pytest.mark.sandbox]

TAGS = {"nixforge-build-id": "b2-test", "nixforge-pipeline": "sandbox", "nixforge-expires-at": "2026-12-01T00:00:00Z"}


@pytest.fixture
def b2(sandbox_instance) -> B2Sandbox:
    assert sandbox_instance.state()["providers"].get("b2") == "running", sandbox_instance.state()["providers"]
    sandbox = B2Sandbox(sandbox_instance)
    sandbox.set_faults({})
    assert sandbox.resources() == [], "the sandbox's B2 was not empty before the test"
    yield sandbox
    sandbox.set_faults({})
    left = sandbox.resources()
    sandbox.clean()
    assert left == [], "the test left B2 resources behind"
    assert sandbox.resources() == []


def random_file(path: Path, size: int) -> str:
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            out.write(chunk)
            left -= len(chunk)
    return sha256_of(path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def delete_all(api: B2Api, bucket: Any) -> None:
    for version, _folder in bucket.ls(latest_only=False, recursive=True):
        api.delete_file_version(version.id_, version.file_name)


def test_published_settings_authorize_and_list_the_fixture_buckets(b2: B2Sandbox) -> None:
    assert b2.url.startswith("https://127.0.0.1:")
    api = b2.api()
    buckets = {b.name: b.type_ for b in api.list_buckets()}
    assert buckets == {b2.public: "allPublic", b2.private: "allPrivate"}
    bad = B2Api(InMemoryAccountInfo())
    with pytest.raises(Unauthorized) as err:
        bad.authorize_account(b2.url, b2.key_id, "K00wrong")
    assert err.value.code == "unauthorized"


def test_small_and_large_uploads_round_trip_and_show_as_resources(b2: B2Sandbox, tmp_path: Path) -> None:
    api = b2.api()
    bucket = api.get_bucket_by_name(b2.public)
    small = bucket.upload_bytes(b"tiny image", "img/small.raw", file_info=TAGS)
    source = tmp_path / "large.img"
    expected = random_file(source, 23 * 1000 * 1000 + 123)
    # 5 MB parts: five parts, uploaded by b2sdk's thread pool in parallel
    large = bucket.upload(UploadSourceLocalFile(str(source)), "img/large.img", file_info=TAGS, min_part_size=5_000_000)
    assert large.content_sha1 == "none" and large.size == source.stat().st_size
    listed = {r["name"]: r for r in b2.resources()}
    assert set(listed) == {"img/small.raw", "img/large.img"}
    assert all(r["type"] == "b2_file" and r["bucket"] == b2.public for r in listed.values())
    assert listed["img/large.img"]["fileInfo"]["nixforge-build-id"] == "b2-test"
    assert listed["img/small.raw"]["tags"] == TAGS

    by_name = tmp_path / "by-name"
    bucket.download_file_by_name("img/large.img").save_to(str(by_name))
    by_id = tmp_path / "by-id"
    api.download_file_by_id(large.id_).save_to(str(by_id))
    assert sha256_of(by_name) == sha256_of(by_id) == expected
    assert api.get_file_info(small.id_).file_info == TAGS

    delete_all(api, bucket)
    assert b2.resources() == []


def test_sha1_mismatch_is_refused_and_stores_nothing(b2: B2Sandbox) -> None:
    api = b2.api()
    bucket = api.get_bucket_by_name(b2.public)
    target = api.session.get_upload_url(bucket.id_)
    data = b"the bytes sent"
    headers = {
        "Authorization": target["authorizationToken"],
        "X-Bz-File-Name": "wrong.bin",
        "Content-Type": "b2/x-auto",
        "X-Bz-Content-Sha1": hashlib.sha1(b"other bytes", usedforsecurity=False).hexdigest(),
    }
    answer = requests.post(target["uploadUrl"], data=data, headers=headers, timeout=30)
    assert answer.status_code == 400
    assert answer.json() == {"status": 400, "code": "bad_request", "message": "Checksum did not match data received"}

    large = api.session.start_large_file(bucket.id_, "parts.bin", "b2/x-auto", {})
    part = api.session.get_upload_part_url(large["fileId"])
    headers = {
        "Authorization": part["authorizationToken"],
        "X-Bz-Part-Number": "1",
        "X-Bz-Content-Sha1": "0" * 40,
    }
    answer = requests.post(part["uploadUrl"], data=data, headers=headers, timeout=30)
    assert answer.status_code == 400 and answer.json()["code"] == "bad_request"
    assert api.session.list_parts(large["fileId"], 1, 100)["parts"] == []
    api.cancel_large_file(large["fileId"])
    assert b2.resources() == []


def test_a_part_under_5mb_that_is_not_the_last_is_refused_at_finish(b2: B2Sandbox) -> None:
    api = b2.api()
    bucket = api.get_bucket_by_name(b2.private)
    large = api.session.start_large_file(bucket.id_, "small-parts.bin", "b2/x-auto", TAGS)
    sha1s = []
    for number, data in ((1, b"a" * 1_000_000), (2, b"b" * 1000)):
        sha1 = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        api.session.upload_part(large["fileId"], number, len(data), sha1, io.BytesIO(data))
        sha1s.append(sha1)
    [unfinished] = [r for r in b2.resources() if r["type"] == "b2_large_file"]
    assert unfinished["name"] == "small-parts.bin" and unfinished["parts"] == 2
    assert unfinished["fileInfo"]["nixforge-pipeline"] == "sandbox"
    with pytest.raises(BadRequest, match="smaller than the minimum part size"):
        api.session.finish_large_file(large["fileId"], sha1s)
    assert [f.file_id for f in bucket.list_unfinished_large_files()] == [large["fileId"]]
    api.cancel_large_file(large["fileId"])
    assert b2.resources() == []


def test_public_and_private_downloads(b2: B2Sandbox, tmp_path: Path) -> None:
    api = b2.api()
    public = api.get_bucket_by_name(b2.public)
    private = api.get_bucket_by_name(b2.private)
    public.upload_bytes(b"0123456789" * 100, "pub/image.qcow2.gz", content_type="application/gzip")
    private.upload_bytes(b"secret image", "builds/one/image.img", file_info=TAGS)

    url = f"{b2.url}/file/{b2.public}/pub/image.qcow2.gz"
    head = requests.head(url, timeout=30)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == "1000" and head.headers["Content-Type"] == "application/gzip"
    ranged = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=30)
    assert (ranged.status_code, ranged.content) == (206, b"0123456789")
    assert ranged.headers["Content-Range"] == "bytes 10-19/1000"

    secret = f"{b2.url}/file/{b2.private}/builds/one/image.img"
    refused = requests.get(secret, timeout=30)
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
    token = private.get_download_authorization("builds/", 600)
    assert requests.get(secret, params={"Authorization": token}, timeout=30).content == b"secret image"
    answer = requests.get(secret, headers={"Authorization": token}, timeout=30)
    assert answer.headers["x-bz-info-nixforge-build-id"] == "b2-test"
    other = private.get_download_authorization("logs/", 600)
    assert requests.get(secret, params={"Authorization": other}, timeout=30).status_code == 401
    assert private.get_download_url("builds/one/image.img") == secret
    target = tmp_path / "secret"
    private.download_file_by_name("builds/one/image.img").save_to(str(target))
    assert target.read_bytes() == b"secret image"
    delete_all(api, public)
    delete_all(api, private)


def test_versions_hide_and_delete(b2: B2Sandbox) -> None:
    api = b2.api()
    bucket = api.get_bucket_by_name(b2.public)
    first = bucket.upload_bytes(b"one", "v/file")
    second = bucket.upload_bytes(b"two", "v/file")
    url = f"{b2.url}/file/{b2.public}/v/file"
    assert requests.get(url, timeout=30).content == b"two"
    bucket.hide_file("v/file")
    assert requests.get(url, timeout=30).status_code == 404
    versions = [(v.id_, v.action) for v, _folder in bucket.ls(latest_only=False, recursive=True)]
    assert versions[1:] == [(second.id_, "upload"), (first.id_, "upload")] and versions[0][1] == "hide"
    assert len(b2.resources()) == 3
    api.delete_file_version(versions[0][0], "v/file")
    assert requests.get(url, timeout=30).content == b"two"
    with pytest.raises(FileNotPresent):
        api.delete_file_version(first.id_, "v/other-name")
    delete_all(api, bucket)
    assert requests.get(url, timeout=30).status_code == 404


def test_b2sdk_rides_through_429_503_and_expired_tokens(b2: B2Sandbox, tmp_path: Path) -> None:
    api = b2.api()
    bucket = api.get_bucket_by_name(b2.public)
    source = tmp_path / "faulty.img"
    expected = random_file(source, 16 * 1000 * 1000)
    b2.set_faults({"rate_429": 0.2, "rate_503": 0.2, "retry_after": 0, "seed": 5})
    uploaded = bucket.upload(UploadSourceLocalFile(str(source)), "faulty.img", min_part_size=5_000_000)
    for n in range(4):
        bucket.upload_bytes(b"x" * n, f"small-{n}")
    target = tmp_path / "back"
    bucket.download_file_by_id(uploaded.id_).save_to(str(target))
    assert sha256_of(target) == expected
    served = b2.served()
    assert served["429"] > 0 and served["503"] > 0, served
    assert "429" not in served["calls"].get("b2_upload_part", {}), "B2 answers uploads with 503, not 429"

    b2.set_faults({"token_ttl": 1})
    time.sleep(1.5)
    assert len(list(bucket.ls(recursive=True))) == 5  # b2sdk authorizes again on expired_auth_token
    bucket.upload_bytes(b"after expiry", "late")  # an expired upload token: b2sdk gets a new URL
    assert b2.served()["expired_auth_token"] >= 1
    b2.set_faults({})
    delete_all(api, bucket)


def test_buckets_made_through_the_api_are_resources(b2: B2Sandbox) -> None:
    api = b2.api()
    bucket = api.create_bucket(f"nixforge-test-{os.getpid()}", "allPrivate")
    assert [r["type"] for r in b2.resources()] == ["b2_bucket"]
    with pytest.raises(B2Error):
        api.create_bucket(bucket.name, "allPublic")
    bucket.upload_bytes(b"x", "f")
    with warnings.catch_warnings(), pytest.raises(B2Error, match="non-empty bucket"):
        warnings.simplefilter("ignore")  # b2sdk warns about B2's code cannot_delete_non_empty_bucket
        api.delete_bucket(bucket)
    delete_all(api, bucket)
    api.delete_bucket(bucket)
    assert b2.resources() == []


def test_digitalocean_imports_from_a_public_bucket_url(b2: B2Sandbox, sandbox_instance) -> None:
    """The DigitalOcean emulator fetches (HEAD, then GET) the B2 URL from the daemon itself."""
    state, reason = DOSandbox.state_of(sandbox_instance.instance.number)
    if state is None:
        sandbox_missing(reason)
    do = DOSandbox(state)
    do.set_faults({"import_delay": 0.2})
    body = gzip.compress(qcow2_image(1024**3))
    api = b2.api()
    bucket = api.get_bucket_by_name(b2.public)
    bucket.upload_bytes(body, f"images/{os.urandom(8).hex()}/nixos.qcow2.gz", file_info=TAGS)
    [name] = [r["name"] for r in b2.resources()]
    image = do.image(name="from-b2", url=b2.public_url(name), region="fra1", distribution="Unknown")
    try:
        image.create()
        deadline = time.time() + 60
        while image.status != "available":
            assert image.status == "NEW", getattr(image, "error_message", image.status)
            assert time.time() < deadline, "the import from B2 did not finish in 60 s"
            time.sleep(0.2)
            image.load()
        [listed] = do.do_resources()
        assert listed["sha256"] == hashlib.sha256(body).hexdigest() and listed["format"] == "qcow2"
    finally:
        image.destroy()
        do.set_faults({})
    delete_all(api, bucket)


def test_https_only_with_the_sandbox_ca(b2: B2Sandbox) -> None:
    """B2 speaks HTTPS only: plain HTTP gets no answer, and the certificate verifies only
    against the sandbox CA (not the system's store alone)."""
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(b2.url.replace("https://", "http://") + "/b2api/v3/b2_authorize_account", timeout=10)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(b2.url + "/b2api/v3/b2_authorize_account", timeout=10, verify="/etc/ssl/certs/ca-certificates.crt")
    answer = requests.get(b2.url + "/b2api/v3/b2_authorize_account", timeout=10, verify=b2.ca_bundle)
    assert (answer.status_code, answer.json()["code"]) == (401, "unauthorized")  # verified; no key given


def test_each_api_version_answers_in_its_own_shape(b2: B2Sandbox) -> None:
    auth = (b2.key_id, b2.key)  # the pipelines' key: one bucket, a name prefix
    v1 = requests.get(b2.url + "/b2api/v1/b2_authorize_account", auth=auth, timeout=10).json()
    assert v1["allowed"]["bucketName"] == b2.public and v1["allowed"]["namePrefix"] == "nixforge/"
    assert v1["minimumPartSize"] == v1["recommendedPartSize"] and "apiInfo" not in v1
    v3 = requests.get(b2.url + "/b2api/v3/b2_authorize_account", auth=auth, timeout=10).json()
    storage = v3["apiInfo"]["storageApi"]
    assert (storage["bucketName"], storage["infoType"]) == (b2.public, "storageApi") and "allowed" not in storage
    v4 = requests.get(b2.url + "/b2api/v4/b2_authorize_account", auth=auth, timeout=10).json()
    assert [b["name"] for b in v4["apiInfo"]["storageApi"]["allowed"]["buckets"]] == [b2.public]
    headers = {"Authorization": v1["authorizationToken"]}
    listed = requests.post(
        v1["apiUrl"] + "/b2api/v1/b2_list_buckets",
        json={"accountId": v1["accountId"], "bucketName": b2.public},
        headers=headers,
        timeout=10,
    ).json()["buckets"]
    assert [b["bucketName"] for b in listed] == [b2.public] and "fileLockConfiguration" not in listed[0]


def test_the_pipelines_key_can_do_what_the_collection_needs_and_nothing_else(b2: B2Sandbox) -> None:
    api = b2.api(b2.key_id, b2.key)
    with pytest.raises(RestrictedBucket):  # b2sdk knows the key's bucket from the authorization
        api.get_bucket_by_name(b2.private)
    [bucket] = api.list_buckets(bucket_name=b2.public)
    assert bucket.type_ == "allPublic"
    version = bucket.upload_bytes(b"image", "nixforge/k1/0123/image.img", file_info=TAGS)
    assert [v.file_name for v, _folder in bucket.ls("nixforge/", recursive=True)] == ["nixforge/k1/0123/image.img"]
    with pytest.raises(B2Error, match="restricted to names starting with 'nixforge/'"):  # b2sdk tried 5 times
        bucket.upload_bytes(b"image", "elsewhere/image.img")
    with pytest.raises(Unauthorized, match="readFiles capability"):
        api.get_file_info(version.id_)
    with pytest.raises(Unauthorized, match="shareFiles capability"):
        bucket.get_download_authorization("nixforge/k1/", 600)
    with pytest.raises(Unauthorized, match="listKeys capability"):
        api.session.list_keys(api.account_info.get_account_id())
    api.delete_file_version(version.id_, version.file_name)
    assert b2.resources() == []


def test_keys_made_through_the_api_are_enforced_listed_and_deleted(b2: B2Sandbox) -> None:
    key_id, secret = b2.create_key("read-builds", ["listBuckets", "listFiles", "readFiles"], b2.private, "builds/")
    assert [r["type"] for r in b2.resources()] == ["b2_key"]
    master = b2.api()
    master.get_bucket_by_name(b2.private).upload_bytes(b"secret image", "builds/one/image.img", file_info=TAGS)
    api = b2.api(key_id, secret)
    [bucket] = api.list_buckets(bucket_name=b2.private)
    assert [v.file_name for v, _folder in bucket.ls("builds/", recursive=True)] == ["builds/one/image.img"]
    assert bucket.download_file_by_name("builds/one/image.img").response.content == b"secret image"
    with pytest.raises(B2Error, match="writeFiles capability"):
        bucket.upload_bytes(b"x", "builds/two/image.img")
    listed = master.session.list_keys(master.account_info.get_account_id())["keys"]
    assert {k["keyName"] for k in listed} >= {"read-builds", "nixforge-pipeline", "nixforge-reaper"}
    master.session.delete_key(key_id)
    with pytest.raises(Unauthorized):
        b2.api(key_id, secret)
    delete_all(master, master.get_bucket_by_name(b2.private))
    assert b2.resources() == []


def test_a_503_on_an_upload_ends_that_upload_url(b2: B2Sandbox) -> None:
    api = b2.api()
    bucket = api.get_bucket_by_name(b2.public)
    target = api.session.get_upload_url(bucket.id_)
    data = b"some bytes"
    headers = {
        "Authorization": target["authorizationToken"],
        "X-Bz-File-Name": "ended.bin",
        "Content-Type": "b2/x-auto",
        "X-Bz-Content-Sha1": hashlib.sha1(data, usedforsecurity=False).hexdigest(),
    }
    b2.set_faults({"service_unavailable": 1, "match": "^b2_upload_file$"})
    first = requests.post(target["uploadUrl"], data=data, headers=headers, timeout=30)
    assert (first.status_code, first.json()["code"]) == (503, "service_unavailable")
    again = requests.post(target["uploadUrl"], data=data, headers=headers, timeout=30)
    assert (again.status_code, again.json()["code"]) == (401, "bad_auth_token")
    assert b2.served()["reused_upload_url"] == 1
    b2.set_faults({"service_unavailable": 2, "match": "^b2_upload_file$"})
    bucket.upload_bytes(data, "after.bin")  # b2sdk takes a new upload URL after each 503
    assert b2.served()["503"] == 2 and b2.served()["reused_upload_url"] == 0
    delete_all(api, bucket)
