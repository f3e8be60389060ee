"""b2_builder_upload against a real sandbox host and the B2 emulator: the builder uploads
the file itself with upload URLs the controller got for it, never with a B2 key.

- a large file (parts in parallel) and a small one (one request) arrive byte for byte, with
  the build identity and the sha256 in the file info; a re-run adopts the object;
- the builder dies mid-upload (its host is stopped while parts go up slowly): the task
  fails saying so and the unfinished large file is cancelled, nothing is left in B2;
- a part whose bytes arrive altered (B2's "Checksum did not match") is sent again; when
  every try arrives altered the upload fails and nothing is left;
- the file on the builder is not the one whose sha256 was recorded: refused before the
  finish, nothing left;
- the finish's answer is lost: the file is found finished and kept, not uploaded again;
- no B2 key and no upload token appears in the output at -vvvv, nor on the builder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from _record import recording, records, result_of
from nfsandbox.b2.testing import B2Sandbox
from nfsandbox.testing import Inventory, SandboxHandle, ansible_playbook

pytestmark = [pytest.mark.sandbox]

MB = 1000 * 1000
PART = 5 * MB
LARGE = "/var/tmp/nf-direct-large.bin"
SMALL = "/var/tmp/nf-direct-small.bin"
TASK = "Upload from the builder"


@dataclass
class Builder:
    host: dict[str, Any]
    inventory: Inventory
    directory: Path
    b2: B2Sandbox
    digests: dict[str, str]
    sizes: dict[str, int]

    def ssh(self, command: str, data: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", "-F", str(self.inventory.ssh_config), f"admin@{self.host['ip']}", command],
            input=data,
            capture_output=True,
            timeout=300,
            check=False,
        )

    def play(self, build_id: str, src: str, **options: Any) -> Path:
        args = {"bucket": self.b2.public, "src": src, "sha256": self.digests[src], "build_id": build_id}
        args.update(part_size="5MB", threads=3, ttl="1h")
        args.update(options)
        play = [
            {
                "name": "Direct upload",
                "hosts": "builders",
                "gather_facts": False,
                "become": True,
                "tasks": [{"name": TASK, "nixforge.images.b2_builder_upload": args, "register": "up"}],
            }
        ]
        path = self.directory / ("play-%s.yml" % time.monotonic_ns())
        path.write_text(yaml.safe_dump(play, sort_keys=False))
        return path

    def env(self, record: Path) -> dict[str, str]:
        # the pipelines' least-privilege key, from the controller's environment only
        env = dict(self.inventory.env, **{k: v for k, v in self.b2.env.items() if k.startswith("B2_")})
        return recording(env, record)

    def run(self, build_id: str, src: str, verbosity: int = 0, **options: Any) -> tuple[Any, dict[str, Any]]:
        record = self.directory / ("rec-%s.jsonl" % time.monotonic_ns())
        args = ["-i", str(self.inventory.path), str(self.play(build_id, src, **options))]
        proc = ansible_playbook(args, self.env(record), verbosity=verbosity)
        return proc, result_of(records(record), TASK)

    def b2_left(self, build_id: str) -> list[dict[str, Any]]:
        return [r for r in self.b2.resources() if build_id in json.dumps(r)]


@pytest.fixture(scope="module")
def builder(sandbox_instance: SandboxHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builder]:
    directory = tmp_path_factory.mktemp("direct")
    b2 = B2Sandbox(sandbox_instance)
    with sandbox_instance.builder_host(directory, "test-direct") as (host, inventory):
        made = Builder(host, inventory, directory, b2, {}, {})
        for path, size in ((LARGE, 3 * PART + 123), (SMALL, 2 * MB)):
            data = os.urandom(size)
            made.digests[path] = hashlib.sha256(data).hexdigest()
            made.sizes[path] = size
            assert made.ssh(f"cat > {path}", data).returncode == 0
        yield made
    b2.clean()


def downloaded(b2: B2Sandbox, name: str) -> bytes:
    api = b2.api()
    bucket = api.get_bucket_by_name(b2.public)
    out = io.BytesIO()
    bucket.download_file_by_name(name).save(out)
    return out.getvalue()


@pytest.mark.parametrize("src", [LARGE, SMALL])
def test_the_builder_uploads_the_file_and_a_rerun_adopts_it(builder: Builder, src: str) -> None:
    build_id = "t-direct-" + os.urandom(3).hex()
    proc, task = builder.run(build_id, src)
    assert task["status"] == "ok", proc.stdout[-5000:]
    result = task["result"]
    obj = result["object"]
    assert result["changed"] and result["uploaded"] and obj["size"] == builder.sizes[src]
    assert result["parts"] == (4 if src == LARGE else 1) and result["rounds"] == 1
    assert obj["name"].startswith(f"nixforge/{build_id}/") and obj["name"].endswith(os.path.basename(src))
    assert obj["file_info"]["sha256"] == builder.digests[src]
    assert obj["file_info"]["nixforge-build-id"] == build_id
    assert obj["url"] == builder.b2.public_url(obj["name"])
    assert hashlib.sha256(downloaded(builder.b2, obj["name"])).hexdigest() == builder.digests[src]
    again, task = builder.run(build_id, src)
    assert task["status"] == "ok" and not task["result"]["changed"] and not task["result"]["uploaded"], again.stdout
    assert task["result"]["object"]["file_id"] == obj["file_id"]
    [left] = builder.b2_left(build_id)  # one object, no unfinished large file
    assert left["type"] != "unfinished_large_file" and "unfinished" not in json.dumps(left), left


def test_the_builder_dying_mid_upload_leaves_nothing(builder: Builder, sandbox_instance: SandboxHandle) -> None:
    """The builder's host is stopped while its parts go up (paced by the emulator): the task
    fails naming the builder, and the large file it had started is cancelled."""
    build_id = "t-direct-die-" + os.urandom(3).hex()
    directory = builder.directory / build_id
    directory.mkdir()
    with sandbox_instance.builder_host(directory, "test-direct-die") as (host, inventory):
        # as builder_host's connection settings do: a builder that vanished is noticed
        with inventory.ssh_config.open("a") as fh:
            fh.write("    ServerAliveInterval 2\n    ServerAliveCountMax 3\n")
        doomed = Builder(host, inventory, directory, builder.b2, builder.digests, builder.sizes)
        assert doomed.ssh(f"head -c {3 * PART + 123} /dev/urandom > {LARGE}").returncode == 0
        doomed.digests = dict(builder.digests, **{LARGE: doomed.ssh(f"sha256sum {LARGE}").stdout.decode().split()[0]})
        builder.b2.set_faults({"upload_rate": 1.0})  # 1 MB/s per part: 5 s a part
        outcome: dict[str, Any] = {}

        def upload() -> None:
            outcome["proc"], outcome["task"] = doomed.run(build_id, LARGE, timeout=30)

        thread = threading.Thread(target=upload)
        thread.start()
        try:
            wait_for_unfinished(builder.b2, build_id)
            sandbox_instance.stop_host(host["name"])
        finally:
            thread.join(timeout=600)
            builder.b2.set_faults({})
    task = outcome["task"]
    assert task["status"] == "failed", outcome["proc"].stdout[-4000:]
    assert "builder" in task["result"]["msg"] and "Nothing was kept in B2" in task["result"]["msg"], task["result"]
    assert builder.b2_left(build_id) == []


def wait_for_unfinished(b2: B2Sandbox, build_id: str) -> None:
    """Until the build's large file is started (the parts then go up for seconds)."""
    deadline = time.monotonic() + 300
    while not [r for r in b2_unfinished(b2) if build_id in r]:
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.2)


def b2_unfinished(b2: B2Sandbox) -> list[str]:
    api = b2.api()
    bucket = api.get_bucket_by_name(b2.public)
    return [f.file_name for f in bucket.list_unfinished_large_files()]


def test_an_altered_part_is_sent_again(builder: Builder) -> None:
    build_id = "t-direct-sha1-" + os.urandom(3).hex()
    builder.b2.set_faults({"corrupt_upload": 1})
    try:
        proc, task = builder.run(build_id, LARGE)
        served = builder.b2.served()
    finally:
        builder.b2.set_faults({})
    assert served["corrupt_upload"] == 1
    assert task["status"] == "ok", proc.stdout[-4000:]
    result = task["result"]
    assert result["attempts"] == result["parts"] + 1 and result["retired"] == 0, result
    assert any("arrived altered" in n for n in result["notes"]), result["notes"]
    assert hashlib.sha256(downloaded(builder.b2, result["object"]["name"])).hexdigest() == builder.digests[LARGE]


def test_parts_altered_every_time_fail_and_leave_nothing(builder: Builder) -> None:
    build_id = "t-direct-sha1x-" + os.urandom(3).hex()
    builder.b2.set_faults({"corrupt_upload": 1000})
    try:
        proc, task = builder.run(build_id, LARGE)
    finally:
        builder.b2.set_faults({})
    assert task["status"] == "failed", proc.stdout[-4000:]
    msg = task["result"]["msg"]
    assert "arrived altered" in msg and "after 5 attempts" in msg and "Nothing was kept in B2" in msg, msg
    assert builder.b2_left(build_id) == []


@pytest.mark.parametrize("src", [LARGE, SMALL])
def test_a_file_that_is_not_the_recorded_one_is_refused(builder: Builder, src: str) -> None:
    build_id = "t-direct-sha256-" + os.urandom(3).hex()
    proc, task = builder.run(build_id, src, sha256="0" * 64)
    assert task["status"] == "failed", proc.stdout[-4000:]
    msg = task["result"]["msg"]
    assert f"has sha256 {builder.digests[src]}, not {'0' * 64}" in msg or "sha256 mismatch" in msg, msg
    assert "Parameter 'sha256'" in msg or "sha256" in msg
    assert builder.b2_left(build_id) == []


def test_a_lost_finish_answer_keeps_the_finished_file(builder: Builder) -> None:
    build_id = "t-direct-lost-" + os.urandom(3).hex()
    builder.b2.set_faults({"lost_answer": 1, "lost_answer_match": "^b2_finish_large_file$"})
    try:
        proc, task = builder.run(build_id, LARGE)
        served = builder.b2.served()
    finally:
        builder.b2.set_faults({})
    assert served["calls"].get("b2_finish_large_file") == {"lost_answer": 1}, served
    assert task["status"] == "ok", proc.stdout[-4000:]
    assert task["result"]["finish_recovered"] is True
    assert "did not answer the finish" in proc.stdout + proc.stderr
    assert (
        hashlib.sha256(downloaded(builder.b2, task["result"]["object"]["name"])).hexdigest() == builder.digests[LARGE]
    )
    [left] = builder.b2_left(build_id)
    assert "unfinished" not in json.dumps(left)


def test_no_key_and_no_token_in_any_output(builder: Builder) -> None:
    """At -vvvv, on success and on failure: neither the application key nor an upload or
    account token is printed; nothing of them is left on the builder either."""
    build_id = "t-direct-secret-" + os.urandom(3).hex()
    builder.b2.set_faults({"service_unavailable": 2, "match": "^b2_upload_part$"})
    try:
        ok, task = builder.run(build_id, LARGE, verbosity=4)
    finally:
        builder.b2.set_faults({})
    assert task["status"] == "ok", ok.stdout[-4000:]
    assert task["result"]["retired"] == 2  # two URLs ended by a 503: their tokens were in play
    bad, failed = builder.run(build_id + "x", LARGE, verbosity=4, sha256="1" * 64)
    assert failed["status"] == "failed"
    key = builder.b2.env["B2_APPLICATION_KEY"]
    # every token the emulator issues to the pipelines' key (account and upload) starts so
    token_prefix = "4_%s_" % builder.b2.env["B2_APPLICATION_KEY_ID"]
    for text in (ok.stdout + ok.stderr, bad.stdout + bad.stderr, json.dumps(task), json.dumps(failed)):
        assert key not in text and token_prefix not in text
    assert "-vvvv" in ok.args[-1] or "ESTABLISH" in ok.stdout  # it really ran verbose
    for needle in (key, token_prefix):
        found = builder.ssh(f"sudo grep -rl -F -e {needle} /root /home /tmp /var/tmp 2>/dev/null || true")
        assert found.stdout.strip() == b"", found.stdout
