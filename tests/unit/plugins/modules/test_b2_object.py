"""Unit tests of the b2_object module's flow.

B2 here is b2sdk's own in-process ``RawSimulator`` behind a real ``B2Api``: b2sdk runs its
real upload planner, part uploads and listing code, the module runs its real logic, with no
network. The HTTP emulator of the sandbox is exercised by tests/integration/test_b2_object.py.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.nixforge.images.plugins.module_utils._b2 import _client as b2
from ansible_collections.nixforge.images.plugins.module_utils._base._retry import RetryPolicy
from ansible_collections.nixforge.images.plugins.modules import b2_object
from b2sdk.v2 import B2Api, B2HttpApiConfig, InMemoryAccountInfo, RawSimulator

FAST = RetryPolicy(max_attempts=4, base_delay=0.0, max_delay=0.0)


class Cloud:
    """One simulated B2 account with a public and a private bucket."""

    def __init__(self) -> None:
        self.admin = B2Api(InMemoryAccountInfo(), api_config=B2HttpApiConfig(_raw_api_class=RawSimulator))
        self.sim = self.admin.session.raw_api
        self.key_id, self.key = self.sim.create_account()
        self.admin.authorize_account("production", self.key_id, self.key)
        self.public = self.admin.create_bucket("pub-bucket", "allPublic")
        self.private = self.admin.create_bucket("priv-bucket", "allPrivate")
        self.clients: list = []

    def client(self, params, threads=4, policy=None):
        b2.b2_client(params, threads)  # the module's own input checks
        api = B2Api(
            InMemoryAccountInfo(),
            api_config=B2HttpApiConfig(_raw_api_class=lambda *a, **k: self.sim),
            max_upload_workers=threads,
        )
        client = b2.B2Client(api, "production", params["application_key_id"], params["application_key"], policy=FAST)
        self.clients.append(client)
        return client

    def files(self, bucket):
        return [(v.file_name, v.file_info) for v, folder in bucket.ls(latest_only=False, recursive=True)]

    def unfinished(self, bucket):
        return list(bucket.list_unfinished_large_files())


@pytest.fixture
def cloud(monkeypatch):
    cloud = Cloud()
    monkeypatch.setattr(b2_object, "b2_client", cloud.client)
    return cloud


class _Exit(Exception):
    def __init__(self, kind, result):
        super().__init__(kind)
        self.kind = kind
        self.result = result


@pytest.fixture
def exits(monkeypatch):
    from ansible.module_utils import basic

    def exit_json(self, **kwargs):
        raise _Exit("exit", json.loads(json.dumps(basic.remove_values(kwargs, self.no_log_values))))

    def fail_json(self, msg, **kwargs):
        kwargs["msg"] = msg
        kwargs["failed"] = True
        raise _Exit("fail", json.loads(json.dumps(basic.remove_values(kwargs, self.no_log_values))))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)


def run(cloud, check_mode=False, **args):
    base = {
        "build_id": "b1",
        "ttl": "1h",
        "bucket": "pub-bucket",
        "application_key_id": cloud.key_id,
        "application_key": cloud.key,
        "api_url": "https://b2.test",
    }
    base.update(args)
    base = {k: v for k, v in base.items() if v is not None}
    if check_mode:
        base["_ansible_check_mode"] = True
    with patch_module_args(base):
        with pytest.raises(_Exit) as info:
            b2_object.B2Object().execute()
    return info.value


def write(path, size, seed=b"x"):
    block = hashlib.sha256(seed).digest() * 32768  # 1 MiB of a pattern
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            handle.write(block[: min(left, len(block))])
            left -= len(block)
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


MB = 1000 * 1000


def leak_free(cloud):
    return cloud.files(cloud.public) == [] and cloud.unfinished(cloud.public) == []


def test_multipart_upload_then_adopt(cloud, exits, tmp_path):
    src = tmp_path / "nixos.qcow2.gz"
    digest = write(src, 12 * MB + 7)
    first = run(cloud, src=str(src), part_size="5MB", tags={"owner": "ops"})
    assert first.kind == "exit", first.result
    obj = first.result["object"]
    assert first.result["changed"] is True and first.result["uploaded"] is True
    assert obj["sha256"] == digest and obj["size"] == 12 * MB + 7
    # unguessable name: prefix, 32 random hex digits, the file name
    parts = obj["name"].split("/")
    assert parts[:2] == ["nixforge", "b1"] and len(parts[2]) == 32 and parts[3] == "nixos.qcow2.gz"
    int(parts[2], 16)
    info = obj["file_info"]
    assert info["nixforge-build-id"] == "b1" and info["nixforge-pipeline"] == "default"
    assert info["nixforge-expires-at"].endswith("Z") and info["sha256"] == digest and info["owner"] == "ops"
    assert first.result["url"] == obj["url"] and obj["url"].endswith("/file/pub-bucket/" + obj["name"])
    stored = cloud.public.get_file_info_by_name(obj["name"])
    assert stored.size == 12 * MB + 7 and stored.file_info["sha256"] == digest
    # the file really went up in parts of 5 MB, the last one shorter
    sizes = [p.content_length for p in cloud.admin.list_parts(obj["file_id"])]
    assert sizes == [5 * MB, 5 * MB, 2 * MB + 7]

    again = run(cloud, src=str(src), part_size="5MB", tags={"owner": "ops"})
    assert again.kind == "exit", again.result
    assert again.result["changed"] is False and again.result["uploaded"] is False
    assert again.result["object"]["name"] == obj["name"] and again.result["object"]["file_id"] == obj["file_id"]
    assert "actions" not in again.result
    assert len(cloud.files(cloud.public)) == 1


def test_small_file_single_request_and_different_content_uploads_again(cloud, exits, tmp_path):
    src = tmp_path / "image.img"
    write(src, 1000, b"a")
    one = run(cloud, src=str(src))
    assert one.kind == "exit" and one.result["uploaded"] is True
    assert "in one request" in one.result["actions"][0]
    write(src, 1000, b"b")  # same file name, new content: not adoptable
    two = run(cloud, src=str(src))
    assert two.kind == "exit" and two.result["uploaded"] is True
    assert two.result["object"]["name"] != one.result["object"]["name"]
    assert len(cloud.files(cloud.public)) == 2


def test_given_sha256_adopts_without_reading(cloud, exits, tmp_path, monkeypatch):
    src = tmp_path / "image.img"
    digest = write(src, 1000)
    assert run(cloud, src=str(src), sha256=digest).kind == "exit"

    def no_read(*args, **kwargs):
        raise AssertionError("src was read although the object is adopted by its sha256")

    monkeypatch.setattr(b2_object, "hash_file", no_read)
    out = run(cloud, src=str(src), sha256=digest.upper())
    assert out.kind == "exit" and out.result["changed"] is False


def test_check_mode_reports_the_actions_of_a_real_run(cloud, exits, tmp_path):
    src = tmp_path / "image.img"
    write(src, 7 * MB)
    check = run(cloud, check_mode=True, src=str(src), part_size="5MB")
    assert check.kind == "exit", check.result
    assert check.result["changed"] is True and check.result["uploaded"] is False
    assert check.result["object"]["file_id"] is None
    assert check.result["object"]["name"].endswith("/<random>/image.img")  # not a name the upload will not use
    assert leak_free(cloud)
    real = run(cloud, src=str(src), part_size="5MB")
    assert real.result["actions"] == check.result["actions"]
    check_absent = run(cloud, check_mode=True, state="absent")
    assert check_absent.result["changed"] is True and len(cloud.files(cloud.public)) == 1
    absent = run(cloud, state="absent")
    assert absent.result["actions"] == check_absent.result["actions"]
    assert absent.result["removed"] == check_absent.result["removed"]


def test_absent_removes_versions_hide_markers_and_unfinished_files_of_the_build(cloud, exits, tmp_path):
    src = tmp_path / "image.img"
    write(src, 1000)
    kept = cloud.public.upload_bytes(b"other build", "nixforge/b2/x/image.img")
    name = run(cloud, src=str(src), name="nixforge/b1/fixed/image.img").result["object"]["name"]
    write(src, 1000, b"new")
    run(cloud, src=str(src), name=name)  # a second version of the same name
    cloud.public.hide_file(name)
    cloud.admin.session.start_large_file(cloud.public.id_, "nixforge/b1/abc/big.img", "b2/x-auto", {})
    assert len(cloud.unfinished(cloud.public)) == 1

    out = run(cloud, state="absent")
    assert out.kind == "exit", out.result
    kinds = sorted(d["kind"] for d in out.result["removed"])
    assert kinds == ["hide marker", "unfinished large file", "version", "version"]
    assert cloud.files(cloud.public) == [("nixforge/b2/x/image.img", {})]
    assert cloud.unfinished(cloud.public) == []
    again = run(cloud, state="absent")
    assert again.result["changed"] is False and again.result["removed"] == []
    assert cloud.public.get_file_info_by_id(kept.id_).file_name == "nixforge/b2/x/image.img"


def test_absent_with_name_removes_only_that_name(cloud, exits, tmp_path):
    src = tmp_path / "image.img"
    write(src, 1000)
    a = run(cloud, src=str(src)).result["object"]["name"]
    b = run(cloud, src=str(src), name="nixforge/b1/named/image.img").result["object"]["name"]
    out = run(cloud, state="absent", name=b)
    assert [d["name"] for d in out.result["removed"]] == [b]
    assert [n for n, info in cloud.files(cloud.public)] == [a]


def test_authorized_url_for_a_private_bucket(cloud, exits, tmp_path):
    src = tmp_path / "image.img"
    write(src, 1000)
    out = run(cloud, src=str(src), bucket="priv-bucket", url_mode="authorized", url_ttl="2h")
    assert out.kind == "exit", out.result
    base, query = out.result["url"].split("?", 1)
    assert base.endswith("/file/priv-bucket/" + out.result["object"]["name"])
    assert query.startswith("Authorization=") and len(query) > len("Authorization=")
    too_long = run(cloud, src=str(src), bucket="priv-bucket", url_mode="authorized", url_ttl="8d")
    assert too_long.kind == "fail" and too_long.result["parameter"] == "url_ttl"


# -- bad input fails before anything is uploaded, naming the parameter -------------------


@pytest.mark.parametrize(
    "args, parameter",
    [
        ({"bucket": "priv-bucket"}, "url_mode"),
        ({"bucket": "no-such-bucket"}, "bucket"),
        ({"application_key": "wrong-key-0123456789"}, "application_key"),
        ({"application_key_id": None}, "application_key_id"),
        ({"application_key": None}, "application_key"),
        ({"sha256": "0" * 64}, "sha256"),
        ({"sha256": "not-hex"}, "sha256"),
        ({"part_size": "4MB"}, "part_size"),
        ({"part_size": "lots"}, "part_size"),
        ({"part_size": "6GB"}, "part_size"),
        ({"threads": 0}, "threads"),
        ({"name": "/leading/slash"}, "name"),
        ({"tags": {"nixforge-build-id": "x"}}, "tags"),
        ({"tags": {"bad key": "x"}}, "tags"),
        ({"tags": {"t%d" % i: "x" for i in range(10)}}, "tags"),  # more than B2's 10 file info entries
        ({"threads": 65}, "threads"),
        ({"url_ttl": "8d"}, "url_ttl"),
        ({"api_url": "ftp://b2.test"}, "api_url"),
    ],
)
def test_bad_input_fails_naming_the_parameter(cloud, exits, tmp_path, monkeypatch, args, parameter):
    for env in ("B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY"):
        monkeypatch.delenv(env, raising=False)
    src = tmp_path / "image.img"
    write(src, 1000)
    out = run(cloud, src=str(src), **args)
    assert out.kind == "fail", out.result
    assert out.result.get("parameter") == parameter, out.result["msg"]
    assert "'%s'" % parameter in out.result["msg"]
    assert "Traceback" not in out.result["msg"]
    assert leak_free(cloud)
    assert cloud.key not in json.dumps(out.result)


def test_missing_src_fails(cloud, exits, tmp_path):
    out = run(cloud, src=str(tmp_path / "nope.img"))
    assert out.kind == "fail" and out.result["parameter"] == "src"


def test_credentials_from_the_environment(cloud, exits, tmp_path, monkeypatch):
    monkeypatch.setenv("B2_APPLICATION_KEY_ID", cloud.key_id)
    monkeypatch.setenv("B2_APPLICATION_KEY", cloud.key)
    src = tmp_path / "image.img"
    write(src, 1000)
    out = run(cloud, src=str(src), application_key_id=None, application_key=None)
    assert out.kind == "exit", out.result


# -- failures: retries, and nothing left behind ------------------------------------------


def test_transient_errors_are_retried(cloud, exits, tmp_path, monkeypatch):
    from b2sdk.v2 import exception as b2exc

    failures = {"left": 2}
    real = cloud.sim.list_file_versions

    def flaky(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise b2exc.ServiceError("503 service_unavailable")
        return real(*args, **kwargs)

    monkeypatch.setattr(cloud.sim, "list_file_versions", flaky)
    src = tmp_path / "image.img"
    write(src, 1000)
    out = run(cloud, src=str(src))
    assert out.kind == "exit", out.result
    assert failures["left"] == 0 and sum(c.retries for c in cloud.clients) >= 1


def test_failed_upload_leaves_no_unfinished_large_file(cloud, exits, tmp_path, monkeypatch):
    from b2sdk.v2 import exception as b2exc

    real = cloud.sim.finish_large_file

    def refuse(*args, **kwargs):
        raise b2exc.BadRequest("part sha1 mismatch", "bad_request")

    monkeypatch.setattr(cloud.sim, "finish_large_file", refuse)
    src = tmp_path / "image.img"
    write(src, 11 * MB)
    out = run(cloud, src=str(src), part_size="5MB")
    assert out.kind == "fail", out.result
    assert "failed: part sha1 mismatch" in out.result["msg"]
    monkeypatch.setattr(cloud.sim, "finish_large_file", real)
    assert leak_free(cloud)


def test_src_changing_during_upload_fails_and_cleans(cloud, exits, tmp_path, monkeypatch):
    src = tmp_path / "image.img"
    write(src, 1000)
    real = b2.B2Client.upload

    def upload_and_touch(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        with open(src, "ab") as handle:
            handle.write(b"late write")
        return result

    monkeypatch.setattr(b2.B2Client, "upload", upload_and_touch)
    out = run(cloud, src=str(src))
    assert out.kind == "fail" and "changed while it was being uploaded" in out.result["msg"]
    assert leak_free(cloud)


def test_no_secret_in_results(cloud, exits, tmp_path):
    src = tmp_path / "image.img"
    write(src, 1000)
    ok = run(cloud, src=str(src), bucket="priv-bucket", url_mode="authorized")
    text = json.dumps(ok.result)
    assert cloud.key not in text
    token = cloud.clients[-1].api.account_info.get_account_auth_token()
    assert token not in text


def test_key_id_inside_the_url_is_not_masked(cloud, exits, tmp_path, monkeypatch):
    # B2 tokens may embed the key id; Ansible's masking of no_log values must not break the URL
    def token_url(self, bucket, name, seconds):
        return "http://dl.test/file/%s/%s?Authorization=3_%s_abc" % (bucket.name, name, cloud.key_id)

    monkeypatch.setattr(b2.B2Client, "authorized_url", token_url)
    src = tmp_path / "image.img"
    write(src, 1000)
    out = run(cloud, src=str(src), bucket="priv-bucket", url_mode="authorized")
    assert out.kind == "exit", out.result
    assert out.result["url"].endswith("Authorization=3_%s_abc" % cloud.key_id)
    args = out.result["invocation"]["module_args"]
    assert args["application_key_id"] == args["application_key"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    assert cloud.key not in json.dumps(out.result)


@pytest.mark.parametrize("size", [1000, 12 * MB])
def test_wrong_sha256_fails_before_the_upload_is_finished(cloud, exits, tmp_path, size):
    src = tmp_path / "image.img"
    actual = write(src, size)
    out = run(cloud, src=str(src), part_size="5MB", sha256="ab" * 32)
    assert out.kind == "fail" and out.result["parameter"] == "sha256", out.result
    assert actual in out.result["msg"] and "not finished" in out.result["msg"]
    assert leak_free(cloud)


def test_given_sha256_is_not_read_twice(cloud, exits, tmp_path, monkeypatch):
    src = tmp_path / "image.img"
    digest = write(src, 12 * MB)

    def no_pre_pass(*args, **kwargs):
        raise AssertionError("src was hashed before the upload although 'sha256' was given")

    monkeypatch.setattr(b2_object, "hash_file", no_pre_pass)
    out = run(cloud, src=str(src), part_size="5MB", sha256=digest)
    assert out.kind == "exit", out.result
    assert out.result["object"]["sha256"] == digest


def test_a_fetch_record_spares_every_sha256_pass(cloud, exits, tmp_path, monkeypatch):
    """A file fetch_artifact verified carries its sha256: neither a pre-pass nor a hash while uploading."""
    from ansible_collections.nixforge.images.plugins.module_utils._b2 import _upload as _b2_upload
    from ansible_collections.nixforge.images.plugins.module_utils._base import _checksum_record as checksum_record

    src = tmp_path / "image.img"
    digest = write(src, 12 * MB)
    assert checksum_record.record(str(src), digest)

    def no_hashing(*args, **kwargs):
        raise AssertionError("src was hashed although its verified sha256 is recorded")

    monkeypatch.setattr(b2_object, "hash_file", no_hashing)
    monkeypatch.setattr(_b2_upload, "SequentialHasher", no_hashing)
    for given in ({"sha256": digest}, {}):
        out = run(cloud, src=str(src), part_size="5MB", **given)
        assert out.kind == "exit", out.result
        assert out.result["sha256_checked"] == "record" and out.result["object"]["sha256"] == digest
        assert run(cloud, state="absent").kind == "exit"


def test_a_record_that_contradicts_the_given_sha256_fails_before_uploading(cloud, exits, tmp_path):
    from ansible_collections.nixforge.images.plugins.module_utils._base import _checksum_record as checksum_record

    src = tmp_path / "image.img"
    digest = write(src, 12 * MB)
    checksum_record.record(str(src), "ab" * 32)  # recorded for other bytes than the caller expects
    out = run(cloud, src=str(src), part_size="5MB", sha256=digest)
    assert out.kind == "fail" and out.result["parameter"] == "sha256", out.result
    assert "recorded when it was fetched" in out.result["msg"] and "nothing was uploaded" in out.result["msg"]
    assert leak_free(cloud)


def test_a_stale_record_is_ignored_and_the_sha256_checked_while_uploading(cloud, exits, tmp_path):
    from ansible_collections.nixforge.images.plugins.module_utils._base import _checksum_record as checksum_record

    src = tmp_path / "image.img"
    write(src, 12 * MB)
    checksum_record.record(str(src), "ab" * 32)
    digest = write(src, 12 * MB, seed=b"y")  # rewritten since: the record no longer applies
    out = run(cloud, src=str(src), part_size="5MB", sha256=digest)
    assert out.kind == "exit", out.result
    assert out.result["sha256_checked"] == "upload" and out.result["object"]["sha256"] == digest


def lose_first_answer(monkeypatch, cloud, method, then=None):
    """B2 carries out the first `method` call but its answer is lost (a dropped connection):
    the client retries a request that has already taken effect. `then`: what the retries
    raise instead of being carried out."""
    from b2sdk.v2.exception import B2ConnectionError

    real = getattr(cloud.sim, method)
    calls = []

    def once(*args, **kwargs):
        calls.append(method)
        if len(calls) > 1 and then is not None:
            raise then
        answer = real(*args, **kwargs)
        if len(calls) == 1:
            raise B2ConnectionError("connection reset after the request was carried out")
        return answer

    monkeypatch.setattr(cloud.sim, method, once)
    return calls


def test_a_finish_carried_out_but_unanswered_is_found_and_kept(cloud, exits, tmp_path, monkeypatch):
    src = tmp_path / "image.img"
    digest = write(src, 12 * MB)
    from b2sdk.v2.exception import BadRequest

    # as B2 answers a second finish: the large file is no longer in progress
    finished = BadRequest("No active upload for this file", "bad_request")
    calls = lose_first_answer(monkeypatch, cloud, "finish_large_file", then=finished)
    warned = []
    monkeypatch.setattr(b2_object.B2Object, "warn", lambda self, msg: warned.append(msg))
    out = run(cloud, src=str(src), part_size="5MB")
    assert len(calls) >= 2  # the retry met a file B2 had already finished
    assert out.kind == "exit", out.result  # found finished with its size and sha256: done, kept
    assert out.result["uploaded"] is True and out.result["object"]["sha256"] == digest
    assert any("did not answer the finish" in w for w in warned), warned
    assert cloud.files(cloud.public) == [(out.result["object"]["name"], out.result["object"]["file_info"])]
    assert cloud.unfinished(cloud.public) == []


def test_an_unanswered_finish_of_other_bytes_is_not_kept(cloud, exits, tmp_path, monkeypatch):
    src = tmp_path / "image.img"
    write(src, 12 * MB)
    from b2sdk.v2.exception import BadRequest

    calls = lose_first_answer(
        monkeypatch, cloud, "finish_large_file", then=BadRequest("No active upload", "bad_request")
    )
    real_list = cloud.sim.list_file_versions

    def other_size(*args, **kwargs):  # what B2 lists is not what was sent: the module must not keep it
        page = real_list(*args, **kwargs)
        for entry in page["files"]:
            entry["contentLength"] = 1
        return page

    monkeypatch.setattr(cloud.sim, "list_file_versions", other_size)
    out = run(cloud, src=str(src), part_size="5MB")
    assert len(calls) >= 2 and out.kind == "fail", out.result
    monkeypatch.setattr(cloud.sim, "list_file_versions", real_list)
    assert leak_free(cloud), cloud.files(cloud.public)


def test_a_retried_single_upload_keeps_one_version(cloud, exits, tmp_path, monkeypatch):
    src = tmp_path / "image.img"
    write(src, 3 * MB)
    calls = lose_first_answer(monkeypatch, cloud, "upload_file")
    out = run(cloud, src=str(src))
    assert out.kind == "exit", out.result
    assert len(calls) == 2 and out.result["uploaded"] is True
    assert cloud.files(cloud.public) == [(out.result["object"]["name"], out.result["object"]["file_info"])]
