"""Logic of the direct upload (b2_builder_upload): the controller's rounds, sha256 check and
clean-up (DirectUpload with a fake client and a fake builder), and how the builder's program
treats B2's answers (Job with fake grants). The real thing against the emulator and a real
host: tests/integration/test_builder_upload.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ansible_collections.nixforge.images.plugins.module_utils._b2 import _builder_parts as parts
from ansible_collections.nixforge.images.plugins.module_utils._b2._direct import DirectUpload
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError, UserInputError

SHA = "a" * 64


class Session:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.finished: list[Any] = []

    def start_large_file(self, bucket_id: str, name: str, content_type: str, info: dict) -> dict:
        self.calls.append(("start", name))
        return {"fileId": "F1"}

    def get_upload_part_url(self, file_id: str) -> dict:
        n = len([c for c in self.calls if c[0] == "grant"])
        self.calls.append(("grant", file_id))
        return {"uploadUrl": "https://pod/%d" % n, "authorizationToken": "tok-%d-secret" % n}

    get_upload_url = get_upload_part_url

    def finish_large_file(self, file_id: str, sha1s: list) -> dict:
        self.finished.append(sha1s)
        return {"fileId": file_id, "fileName": "n", "contentLength": 30}


class Client:
    def __init__(self) -> None:
        self.secrets: list[str] = ["KEY"]
        self.api = type("Api", (), {"session": Session()})()
        self.cancelled: list[str] = []
        self.removed: list[Any] = []

    def call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return fn(*args)

    def add_secret(self, value: str) -> None:
        self.secrets.append(value)

    def cancel_large_file(self, bucket: Any, file_id: str, name: str) -> None:
        self.cancelled.append(file_id)

    def remove_new(self, bucket: Any, name: str, before: Any, marks: Any, keep: Any = None) -> None:
        self.removed.append((name, keep))


def upload(answers: list[dict], size: int = 30, sha256: str = SHA) -> tuple[DirectUpload, Client, list[dict]]:
    client = Client()
    jobs: list[dict] = []

    def remote(job: dict) -> dict:
        jobs.append(job)
        return answers[len(jobs) - 1]

    settings = dict(src="/img", size=size, name="n", info={"sha256": sha256, "nixforge-build-id": "b"})
    settings.update(sha256=sha256, part_size=10, threads=2, rounds=3, timeout=30)
    bucket = type("Bucket", (), {"id_": "B"})()
    return DirectUpload(client, bucket, remote, settings), client, jobs


def test_parts_missing_after_a_round_get_fresh_grants_in_the_next() -> None:
    first = {"sha1s": {"1": "s1", "3": "s3"}, "sha256": SHA, "retired": 4, "notes": ["part 2: HTTP 503 tok-0-secret"]}
    second = {"sha1s": {"2": "s2"}, "sha256": None}
    direct, client, jobs = upload([first, second])
    direct.upload()
    assert [p[0] for p in jobs[1]["parts"]] == [2] and jobs[1]["sha256"] is False
    assert client.api.session.finished == [["s1", "s2", "s3"]]
    assert direct.stats["rounds"] == 2 and direct.stats["retired"] == 4
    assert "tok-0-secret" not in json.dumps(direct.stats)  # tokens masked in what is reported
    assert client.cancelled == [] and client.removed == [("n", "F1")]


def test_a_sha256_that_differs_cancels_before_the_finish() -> None:
    direct, client, _jobs = upload([{"sha1s": {"1": "a", "2": "b", "3": "c"}, "sha256": "b" * 64}])
    with pytest.raises(UserInputError, match="not " + SHA):
        direct.upload()
    assert client.api.session.finished == [] and client.cancelled == ["F1"]


def test_builder_errors_cancel_and_fail() -> None:
    direct, client, _jobs = upload([{"errors": ["the builder stopped answering: tok-1-secret gone"]}])
    with pytest.raises(ProviderError) as raised:
        direct.upload()
    assert "tok-1-secret" not in str(raised.value) and client.cancelled == ["F1"]


def test_rounds_run_out() -> None:
    direct, client, _jobs = upload([{"sha1s": {}, "sha256": SHA}] * 3)
    with pytest.raises(ProviderError, match="after 3 rounds"):
        direct.upload()
    assert client.cancelled == ["F1"]


def test_a_small_file_gets_single_file_upload_urls() -> None:
    answer = {"sha1s": {"1": "x"}, "sha256": SHA, "file": {"fileId": "S1", "fileName": "n"}}
    direct, client, jobs = upload([answer], size=5)
    assert direct.upload()["fileId"] == "S1"
    assert jobs[0]["kind"] == "small" and jobs[0]["expected_sha256"] == SHA and jobs[0]["name"] == "n"
    assert [c[0] for c in client.api.session.calls] == ["grant"] * 3  # no large file started


# -- the builder's program: B2's answers ---------------------------------------------


class FakeGrant:
    def __init__(self, answers: list[tuple[int, dict]]) -> None:
        self.answers = answers
        self.closed = 0

    def post(self, headers: Any, path: str, offset: int, length: int) -> tuple[int, bytes, str]:
        status, body = self.answers.pop(0)
        if status == -1:
            raise parts.Retire("connection: reset")
        if status == 200:  # B2 stored what was sent
            body = {"contentSha1": "sha1-%d" % offset}
        return status, json.dumps(body).encode(), "sha1-%d" % offset

    def close(self) -> None:
        self.closed += 1


def job(grants: list[FakeGrant], items: int = 2, threads: int = 1) -> parts.Job:
    spec = {"kind": "large", "path": "/x", "size": 20, "grants": [], "threads": threads, "attempts": 3}
    spec["parts"] = [[n + 1, n * 10, 10] for n in range(items)]
    made = parts.Job(spec)
    for grant in grants:
        made.grants.put(grant)
    return made


def ok() -> tuple[int, dict]:
    return 200, {}


def test_an_altered_part_is_sent_again_on_the_same_grant() -> None:
    grant = FakeGrant([(400, {"code": "bad_request", "message": "Checksum did not match data received"}), ok(), ok()])
    answer = job([grant]).run()
    assert answer["sha1s"] == {1: "sha1-0", 2: "sha1-10"} and answer["retired"] == 0
    assert answer["attempts"] == 3 and "arrived altered" in answer["notes"][0]


def test_an_ended_grant_is_retired_and_the_part_goes_to_a_spare() -> None:
    ended, spare = FakeGrant([(503, {"code": "service_unavailable", "message": "busy"})]), FakeGrant([ok(), ok()])
    answer = job([ended, spare]).run()
    assert answer["sha1s"] == {1: "sha1-0", 2: "sha1-10"} and answer["retired"] == 1 and answer["missing"] == []


def test_parts_without_a_grant_are_reported_missing() -> None:
    answer = job([FakeGrant([(-1, {})])]).run()
    assert answer["sha1s"] == {} and answer["missing"] == [1, 2] and answer["errors"] == []


def test_a_refusal_stops_everything() -> None:
    grant = FakeGrant([(400, {"code": "bad_request", "message": "no such file"})])
    answer = job([grant]).run()
    assert answer["errors"] and "no such file" in answer["errors"][0]


def test_a_part_altered_every_time_fails_after_its_attempts() -> None:
    altered = (400, {"code": "bad_request", "message": "Checksum did not match data received"})
    answer = job([FakeGrant([altered] * 3)], items=1).run()
    assert "after 3 attempts" in answer["errors"][0]
