"""b2_object through ansible-playbook against the sandbox's B2 emulator.

Real HTTPS to the emulator's native API (b2sdk inside the module, trusting the sandbox CA
through B2_CA_BUNDLE), real downloads of the returned URLs, credentials from the
environment the way a user sets them (`sandboxctl env`: B2_API_URL and the pipelines'
least-privilege key in B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY: listBuckets, listFiles,
writeFiles, deleteFiles on the public bucket, names under nixforge/). Every test ends by
checking that `sandboxctl resources --json` lists no B2 file of its build.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "sandbox"))

from nfsandbox.testing import SandboxHandle, play_module, sandbox_missing  # noqa: E402

pytestmark = [pytest.mark.sandbox]
# the plays' directories (results, ansible's state); gone when the test session ends
WORK = Path(tempfile.mkdtemp(prefix="nfb2-"))
atexit.register(shutil.rmtree, WORK, True)
MB = 1000 * 1000
B2_ENV = ("B2_API_URL", "B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY")


class B2Sandbox:
    def __init__(self, handle: SandboxHandle) -> None:
        self.handle = handle
        self.env = handle.env()
        self.public = self.env["NIXFORGE_SANDBOX_B2_PUBLIC_BUCKET"]
        self.private = self.env["NIXFORGE_SANDBOX_B2_PRIVATE_BUCKET"]
        self.master = (self.env["NIXFORGE_SANDBOX_B2_MASTER_KEY_ID"], self.env["NIXFORGE_SANDBOX_B2_MASTER_KEY"])
        self.reaper = (self.env["NIXFORGE_SANDBOX_B2_REAPER_KEY_ID"], self.env["NIXFORGE_SANDBOX_B2_REAPER_KEY"])

    def key_args(self, key: tuple[str, str]) -> dict[str, str]:
        return {"application_key_id": key[0], "application_key": key[1]}

    def create_key(self, name: str, capabilities: list[str], bucket: str, prefix: str = "nixforge/") -> tuple[str, str]:
        """b2_create_key with the master key (the test deletes it with delete_key)."""
        auth = authorize(self, self.master)
        api_url = auth["apiInfo"]["storageApi"]["apiUrl"]
        [found] = b2_call(
            self.env, api_url + "/b2api/v3/b2_list_buckets", auth["authorizationToken"],
            {"accountId": auth["accountId"], "bucketName": bucket},
        )["buckets"]  # fmt: skip
        made = b2_call(
            self.env, api_url + "/b2api/v3/b2_create_key", auth["authorizationToken"],
            {"accountId": auth["accountId"], "keyName": name, "capabilities": capabilities,
             "bucketId": found["bucketId"], "namePrefix": prefix},
        )  # fmt: skip
        return made["applicationKeyId"], made["applicationKey"]

    def delete_key(self, key_id: str) -> None:
        auth = authorize(self, self.master)
        url = auth["apiInfo"]["storageApi"]["apiUrl"] + "/b2api/v3/b2_delete_key"
        assert b2_call(self.env, url, auth["authorizationToken"], {"applicationKeyId": key_id}) is not None

    def files_of(self, build_id: str) -> list[dict[str, Any]]:
        """What `sandboxctl resources --json` lists of B2 under the build's prefix."""
        marker = "nixforge/%s/" % build_id
        return [r for r in self.handle.resources() if r.get("provider") == "b2" and marker in json.dumps(r)]

    def set_faults(self, faults: dict[str, Any]) -> None:
        self.handle.set_faults("b2", faults)


@pytest.fixture(scope="module")
def b2(sandbox_instance) -> B2Sandbox:
    env = sandbox_instance.env()
    if "B2_API_URL" not in env:
        status = (sandbox_instance.state().get("providers") or {}).get("b2", "not loaded")
        sandbox_missing("the sandbox has no B2 emulator (%s)" % status)
    return B2Sandbox(sandbox_instance)


@pytest.fixture
def clean(b2, request):
    """Faults cleared before and after; afterwards nothing of the test's builds is left."""
    b2.set_faults({})
    builds: list[str] = []
    yield builds
    b2.set_faults({})
    left = [r for build in builds for r in b2.files_of(build)]
    if left:  # remove the leak so that the next tests start clean, then fail
        for build in builds:
            reaper = b2.key_args(b2.reaper)
            run_tasks(
                b2, request.node.name + "-cleanup", [absent(b2.public, build), absent(b2.private, build, **reaper)]
            )
    assert left == []


def run_tasks(
    b2: B2Sandbox,
    workdir_name: str,
    tasks: list[dict[str, Any]],
    verbosity: int = 0,
    drop_env: tuple = (),
) -> tuple[list[dict[str, Any]], subprocess.CompletedProcess]:
    """Run `b2_object` once per entry (module arguments) on localhost (`play_module`); every
    task runs (ignore_errors) and the registered results come back as a list."""
    workdir = WORK / re.sub(r"[^A-Za-z0-9]+", "-", workdir_name)[:60]
    return play_module("nixforge.images.b2_object", tasks, workdir, b2.env, verbosity=verbosity, unset_env=drop_env)


def tasks_results(b2: B2Sandbox, workdir_name: str, tasks: list[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
    return run_tasks(b2, workdir_name, tasks, **kw)[0]


def absent(bucket: str, build_id: str, **extra: Any) -> dict[str, Any]:
    return {"bucket": bucket, "state": "absent", "build_id": build_id, **extra}


def random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            block = os.urandom(min(left, 4 * 1024 * 1024))
            handle.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def fetch(url: str, env: dict[str, str]) -> tuple[int, str]:
    """(HTTP status, sha256 of the body) of an unauthenticated GET."""
    import ssl

    context = ssl.create_default_context(cafile=env.get("REQUESTS_CA_BUNDLE")) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(url, timeout=120, context=context) as response:  # noqa: S310 - sandbox B2
            digest = hashlib.sha256()
            while True:
                block = response.read(1 << 20)
                if not block:
                    return response.status, digest.hexdigest()
                digest.update(block)
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def ok(result: dict[str, Any]) -> dict[str, Any]:
    assert not result.get("failed"), result.get("msg")
    return result


# -- tests ------------------------------------------------------------------------------


def test_public_small_and_multipart_upload_adopt_and_absent(b2, clean, tmp_path):
    build = "it-b2-public"
    clean.append(build)
    small, large = tmp_path / "small.img", tmp_path / "nixos.qcow2.gz"
    small_sha, large_sha = random_file(small, 4096), random_file(large, 40 * MB)
    upload = {"bucket": b2.public, "build_id": build, "ttl": "1h", "part_size": "5MB", "threads": 4}
    results = tasks_results(
        b2,
        "public",
        [
            {**upload, "src": str(small)},
            {**upload, "src": str(large), "sha256": large_sha},
            {**upload, "src": str(small)},  # same build, same file: adopted
            {**upload, "src": str(large)},
        ],
    )
    first_small, first_large, again_small, again_large = (ok(r) for r in results)
    for result, digest, size in ((first_small, small_sha, 4096), (first_large, large_sha, 40 * MB)):
        assert result["changed"] is True and result["uploaded"] is True
        obj = result["object"]
        assert obj["sha256"] == digest and obj["size"] == size and obj["bucket"] == b2.public
        assert re.match(r"^nixforge/%s/[0-9a-f]{32}/[^/]+$" % build, obj["name"])
        assert obj["file_info"]["nixforge-build-id"] == build and obj["file_info"]["sha256"] == digest
        assert obj["file_info"]["nixforge-pipeline"] == "default"
        assert obj["file_info"]["nixforge-expires-at"].endswith("Z")
        # the public URL serves the exact bytes without any authorization
        assert fetch(result["url"], b2.env) == (200, digest)
    # the large one went up as a B2 large file (in parts: B2 keeps no whole-file sha1), the small one in one request
    assert stored(b2, first_large["object"]["file_id"])["contentSha1"] == "none"
    small_bytes = small.read_bytes()
    assert stored(b2, first_small["object"]["file_id"])["contentSha1"] == hashlib.sha1(small_bytes).hexdigest()  # noqa: S324
    assert "in parts of 5000000 bytes" in first_large["actions"][0]
    for again, first in ((again_small, first_small), (again_large, first_large)):
        assert again["changed"] is False and again["uploaded"] is False
        assert again["object"]["file_id"] == first["object"]["file_id"] and again["url"] == first["url"]
    assert len(b2.files_of(build)) == 2

    results = tasks_results(b2, "public-absent", [absent(b2.public, build), absent(b2.public, build)])
    gone, again = (ok(r) for r in results)
    assert gone["changed"] is True
    assert sorted(d["name"] for d in gone["removed"]) == sorted(
        [first_small["object"]["name"], first_large["object"]["name"]]
    )
    assert again["changed"] is False and again["removed"] == []
    assert fetch(first_small["url"], b2.env)[0] == 404
    assert b2.files_of(build) == []


def test_authorized_url_on_a_private_bucket(b2, clean, tmp_path):
    build = "it-b2-private"
    clean.append(build)
    src = tmp_path / "image.img"
    digest = random_file(src, 12 * MB)
    # the least key for url_mode=authorized: the pipelines' capabilities plus shareFiles
    key = b2.create_key(
        "it-authorized", ["listBuckets", "listFiles", "writeFiles", "deleteFiles", "shareFiles"], b2.private
    )
    try:
        results = tasks_results(
            b2,
            "private",
            [
                {
                    "bucket": b2.private,
                    "build_id": build,
                    "src": str(src),
                    "url_mode": "authorized",
                    "url_ttl": "30m",
                    "part_size": "5MB",
                    **b2.key_args(key),
                },
            ],
        )
    finally:
        b2.delete_key(key[0])
    result = ok(results[0])
    url = result["url"]
    base, query = url.split("?", 1)
    assert query.startswith("Authorization=")
    assert fetch(url, b2.env) == (200, digest)
    status = fetch(base, b2.env)[0]  # the private bucket refuses the same object without the token
    assert status in (401, 403)
    results = tasks_results(b2, "private-absent", [absent(b2.private, build, **b2.key_args(b2.reaper))])
    assert len(ok(results[0])["removed"]) == 1
    assert b2.files_of(build) == []


def test_bad_input_fails_before_uploading_naming_the_parameter(b2, clean, tmp_path):
    build = "it-b2-bad"
    clean.append(build)
    src = tmp_path / "image.img"
    random_file(src, 1000)
    base = {"build_id": build, "src": str(src)}
    results = tasks_results(
        b2,
        "bad",
        [
            {**base, "bucket": "no-such-bucket-here"},
            {**base, "bucket": b2.private, **b2.key_args(b2.reaper)},  # url_mode public on a private bucket
            {**base, "bucket": b2.public, "sha256": "0" * 64},
            {**base, "bucket": b2.public, "application_key": "K00wrongwrongwrongwrong"},
            {**base, "bucket": b2.public, "part_size": "1MB"},
        ],
    )
    expected = ["bucket", "url_mode", "sha256", "application_key", "part_size"]
    for result, parameter in zip(results, expected):
        assert result.get("failed"), result
        assert result.get("parameter") == parameter, result["msg"]
        assert "'%s'" % parameter in result["msg"] and "Traceback" not in result["msg"]
    assert b2.private in results[1]["msg"]
    results = tasks_results(b2, "bad-nocreds", [{**base, "bucket": b2.public}], drop_env=B2_ENV[1:])
    assert results[0].get("failed") and results[0]["parameter"] == "application_key_id", results[0]
    assert b2.files_of(build) == []


def test_throttling_and_server_errors_are_survived(b2, clean, tmp_path):
    build = "it-b2-faults"
    clean.append(build)
    src = tmp_path / "nixos.qcow2.gz"
    digest = random_file(src, 40 * MB)
    # the next call of each kind fails for sure (then 20% at random): the assertion on the
    # counters below never depends on the draw
    b2.set_faults({**FAULTS_20_PERCENT, "throttle": 1, "service_unavailable": 1})
    started = time.monotonic()
    results = tasks_results(
        b2, "faults", [{"bucket": b2.public, "build_id": build, "src": str(src), "part_size": "5MB"}]
    )
    fired = fault_counters(b2)
    b2.set_faults({})
    result = ok(results[0])
    assert result["object"]["sha256"] == digest
    assert fetch(result["url"], b2.env) == (200, digest)
    assert fired["429"] + fired["503"] > 0, fired
    assert fired["reused_upload_url"] == 0, fired  # after a 503 on an upload, a new upload URL each time
    print("faults fired: %s in %.1fs" % (fired, time.monotonic() - started))
    results = tasks_results(b2, "faults-absent", [absent(b2.public, build)])
    ok(results[0])
    assert b2.files_of(build) == []


def test_expired_tokens_are_renewed(b2, clean, tmp_path):
    build = "it-b2-tokens"
    clean.append(build)
    src = tmp_path / "nixos.qcow2.gz"
    digest = random_file(src, 100 * MB)
    b2.set_faults({"token_ttl": 0.2})  # account and upload tokens expire while the parts go up
    results = tasks_results(
        b2, "tokens", [{"bucket": b2.public, "build_id": build, "src": str(src), "part_size": "5MB", "threads": 1}]
    )
    fired = fault_counters(b2)
    b2.set_faults({})
    result = ok(results[0])
    assert fired["expired_auth_token"] > 0, fired
    assert fetch(result["url"], b2.env) == (200, digest)
    assert len(ok(tasks_results(b2, "tokens-absent", [absent(b2.public, build)])[0])["removed"]) == 1
    assert b2.files_of(build) == []


def test_vvvv_output_holds_no_secret(b2, clean, tmp_path):
    build = "it-b2-secrets"
    clean.append(build)
    src = tmp_path / "image.img"
    random_file(src, 6 * MB)
    tasks = [
        {"bucket": b2.public, "build_id": build, "src": str(src), "part_size": "5MB"},
        {"bucket": "no-such-bucket-here", "build_id": build, "src": str(src)},
        absent(b2.public, build),
    ]
    results, proc = run_tasks(b2, "secrets", tasks, verbosity=4)
    assert not results[0].get("failed") and results[1].get("failed") and not results[2].get("failed")
    output = proc.stdout + proc.stderr
    assert b2.env["B2_APPLICATION_KEY"] not in output
    assert b2.env["B2_APPLICATION_KEY_ID"] not in output
    assert leaked_tokens(b2, output) == []
    assert "authorizationToken" not in output
    assert b2.files_of(build) == []


# -- the emulator's knobs (tests/sandbox/nfsandbox/b2/faults.py) and a token probe --------

# 20% of all calls fail: half with 429 (served as 503 on uploads, as B2 does), half with 503.
FAULTS_20_PERCENT: dict[str, Any] = {"rate_429": 0.1, "rate_503": 0.1, "retry_after": 1}


def fault_counters(b2: B2Sandbox, served: dict[str, Any] | None = None) -> dict[str, int]:
    """What the emulator served since the faults were set: {"429": n, "503": n} (from ``served``,
    the emulator's counters, when the caller read them already)."""
    served = served if served is not None else b2.handle.call("GET", "/faults/b2")["faults"]["served"]
    keys = ("429", "503", "expired_auth_token", "lost_answer", "reused_upload_url")
    return {k: int(served.get(k, 0)) for k in keys}


def leaked_tokens(b2: B2Sandbox, text: str) -> list[str]:
    """Every token-like string of ``text`` that the emulator accepts as an account
    authorization token (tried against b2_list_buckets): none may be printed."""
    env = b2.env
    auth = authorize(b2)
    api_url = auth["apiInfo"]["storageApi"]["apiUrl"]
    # a call every account token of the pipelines' key may make (it names the key's bucket)
    probe = {"accountId": auth["accountId"], "bucketName": b2.public}
    assert b2_call(env, api_url + "/b2api/v3/b2_list_buckets", auth["authorizationToken"], probe)
    leaked = []
    # the emulator's tokens are "4_<key id>_<urlsafe base64>": this alphabet finds them inside
    # "Authorization=..." or a URL path too, where a wider one would glue them to their neighbours
    candidates = sorted(set(re.findall(r"[A-Za-z0-9_-]{20,}", text)))
    assert len(candidates) < 5000, "too many candidates to try each one"
    for candidate in candidates:
        if b2_call(env, api_url + "/b2api/v3/b2_list_buckets", candidate, probe) is not None:
            leaked.append(candidate)
    return leaked


def authorize(b2: B2Sandbox, key: tuple[str, str] | None = None) -> dict[str, Any]:
    import base64

    env = b2.env
    key_id, secret = key or (env["B2_APPLICATION_KEY_ID"], env["B2_APPLICATION_KEY"])
    basic = base64.b64encode(("%s:%s" % (key_id, secret)).encode())
    return b2_call(env, env["B2_API_URL"].rstrip("/") + "/b2api/v3/b2_authorize_account", "Basic " + basic.decode())


def stored(b2: B2Sandbox, file_id: str) -> dict[str, Any]:
    """b2_get_file_info of one file version (readFiles: the master key)."""
    auth = authorize(b2, b2.master)
    url = auth["apiInfo"]["storageApi"]["apiUrl"] + "/b2api/v3/b2_get_file_info"
    return b2_call(b2.env, url, auth["authorizationToken"], {"fileId": file_id})


def b2_call(env: dict[str, str], url: str, token: str, body: dict[str, Any] | None = None) -> Any:
    """One native API call (POST with ``body``, else GET); None when B2 refuses it."""
    import ssl

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")  # noqa: S310
    request.add_header("Authorization", token)
    context = ssl.create_default_context(cafile=env.get("REQUESTS_CA_BUNDLE")) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:  # noqa: S310 - sandbox B2
            return json.loads(response.read())
    except urllib.error.HTTPError:
        return None


# -- certificates, keys, lost answers -----------------------------------------------------


def test_a_certificate_that_does_not_verify_fails_naming_ca_bundle(b2, clean, tmp_path):
    import trustme

    build = "it-b2-tls"
    clean.append(build)
    src = tmp_path / "image.img"
    random_file(src, 1000)
    other = tmp_path / "other-ca.pem"
    trustme.CA(organization_name="not the sandbox").cert_pem.write_to_path(str(other))
    task = {"bucket": b2.public, "build_id": build, "src": str(src)}
    results = tasks_results(b2, "tls", [{**task, "ca_bundle": str(other)}])
    # and with no CA named at all: the system's store, which does not know the sandbox CA
    results += tasks_results(b2, "tls-system", [task], drop_env=("B2_CA_BUNDLE", "REQUESTS_CA_BUNDLE"))
    for result in results:
        assert result.get("failed") and result.get("parameter") == "ca_bundle", result
        assert "'ca_bundle'" in result["msg"] and "certificate" in result["msg"], result["msg"]
        assert "Traceback" not in result["msg"]
    assert b2.files_of(build) == []


def test_a_key_lacking_one_capability_fails_naming_it(b2, clean, tmp_path):
    build = "it-b2-caps"
    clean.append(build)
    src = tmp_path / "image.img"
    random_file(src, 1000)
    needed = ["listBuckets", "listFiles", "writeFiles", "deleteFiles"]
    keys = {
        missing: b2.create_key("it-no-" + missing, [c for c in needed if c != missing], b2.public) for missing in needed
    }
    upload = {"bucket": b2.public, "build_id": build, "src": str(src)}
    try:
        tasks = [{**upload, **b2.key_args(keys[m])} for m in ("listBuckets", "listFiles", "writeFiles")]
        tasks.append({**upload, **b2.key_args(keys["deleteFiles"])})  # uploads: nothing to delete
        tasks.append(absent(b2.public, build, **b2.key_args(keys["deleteFiles"])))
        tasks.append({**upload, "url_mode": "authorized"})  # the pipelines' key has no shareFiles
        results = tasks_results(b2, "caps", tasks)
    finally:
        for key_id, _secret in keys.values():
            b2.delete_key(key_id)
    no_list_buckets, no_list_files, no_write, no_delete_upload, no_delete, no_share = results
    for result, capability in (
        (no_list_buckets, "listBuckets"),
        (no_list_files, "listFiles"),
        (no_write, "writeFiles"),
        (no_delete, "deleteFiles"),
        (no_share, "shareFiles"),
    ):
        assert result.get("failed"), (capability, result)
        assert "needs the %s capability" % capability in result["msg"], result["msg"]
        assert result["parameter"] == "application_key_id" and "Traceback" not in result["msg"]
    assert ok(no_delete_upload)["uploaded"] is True
    left = {r["name"] for r in b2.files_of(build)}
    assert left == {no_delete_upload["object"]["name"]}  # kept only what the key could not delete
    ok(tasks_results(b2, "caps-absent", [absent(b2.public, build)])[0])
    assert b2.files_of(build) == []


def test_a_lost_finish_answer_keeps_the_finished_upload(b2, clean, tmp_path):
    build = "it-b2-lost-finish"
    clean.append(build)
    src = tmp_path / "nixos.qcow2.gz"
    digest = random_file(src, 12 * MB)  # three parts of 5 MB
    b2.set_faults({"lost_answer": 1, "lost_answer_match": "^b2_finish_large_file$"})
    results, proc = run_tasks(
        b2, "lost-finish", [{"bucket": b2.public, "build_id": build, "src": str(src), "part_size": "5MB"}]
    )
    fired = fault_counters(b2)
    b2.set_faults({})
    result = ok(results[0])
    assert fired["lost_answer"] == 1, fired  # B2 finished the file, the module never heard of it
    assert result["uploaded"] is True and result["object"]["sha256"] == digest
    assert "did not answer the finish" in proc.stdout + proc.stderr
    [kept] = b2.files_of(build)  # the finished file, neither deleted nor uploaded twice
    assert kept["id"] == result["object"]["file_id"] and kept["type"] == "b2_file"
    assert stored(b2, kept["id"])["contentSha1"] == "none"  # a B2 large file
    assert fetch(result["url"], b2.env) == (200, digest)
    ok(tasks_results(b2, "lost-finish-absent", [absent(b2.public, build)])[0])
    assert b2.files_of(build) == []


def test_lost_answers_on_every_mutating_call_leave_one_object(b2, clean, tmp_path):
    build = "it-b2-lost"
    clean.append(build)
    big, small = tmp_path / "nixos.qcow2.gz", tmp_path / "small.img"
    big_sha, small_sha = random_file(big, 16 * MB), random_file(small, 4096)
    # The finish's answer is lost for certain (B2 finished the file: the module must find it
    # so); the other mutating calls lose 15% of their answers. The rate keeps five losses in
    # a row on one call (the module's retries then give up, as they should) below 1 in 10^4.
    lossy = {"lost_answer_rate": 0.15}
    calls = ("b2_start_large_file", "b2_upload_part", "b2_finish_large_file", "b2_upload_file", "b2_cancel_large_file")
    finish = {"lost_answer": 1, "lost_answer_match": "^b2_finish_large_file$"}
    b2.set_faults({"calls": {c: lossy for c in calls}, **finish, "seed": 11})
    upload = {"bucket": b2.public, "build_id": build, "part_size": "5MB"}
    results = tasks_results(b2, "lost", [{**upload, "src": str(big)}, {**upload, "src": str(small)}])
    served = b2.handle.call("GET", "/faults/b2")["faults"]["served"]
    fired = fault_counters(b2, served)
    finish_lost = served["calls"]["b2_finish_large_file"]["lost_answer"]
    # one version per upload: no second copy of a retried upload, no unfinished large file left
    # (the draws fall on other calls when the parts' threads interleave otherwise: say what the
    # modules answered and which faults fired, to replay a combination that fails)
    found = b2.files_of(build)
    why = {
        "files": found,
        "fired": fired,
        "results": [{k: r.get(k) for k in ("failed", "msg", "uploaded", "retries")} for r in results],
    }
    assert sorted(r["type"] for r in found) == ["b2_file", "b2_file"], why
    large, one = (ok(r) for r in results)
    assert (large["object"]["sha256"], one["object"]["sha256"]) == (big_sha, small_sha)
    assert fetch(large["url"], b2.env) == (200, big_sha) and fetch(one["url"], b2.env) == (200, small_sha)
    b2.set_faults({"lost_answer": 1, "lost_answer_match": "^b2_delete_file_version$"})
    gone = tasks_results(b2, "lost-absent", [absent(b2.public, build)])[0]
    fired_delete = fault_counters(b2)
    b2.set_faults({})
    assert finish_lost >= 1 and fired["lost_answer"] >= finish_lost, fired
    ok(gone)
    assert fired_delete["lost_answer"] == 1, fired_delete
    print("lost answers: upload %s, absent %s" % (fired, fired_delete))
    assert b2.files_of(build) == []
