"""do_custom_image through ansible-playbook against the sandbox's DigitalOcean emulator.

The emulator runs in the sandbox daemon and really fetches the image (HEAD, then GET)
from a small HTTP server this test starts on 127.0.0.1, serving a real qcow2 inside gzip.
The token and the endpoint come from the environment (DIGITALOCEAN_TOKEN,
DIGITALOCEAN_API_URL), the way a user sets them. Every test ends with nothing of
DigitalOcean in `sandboxctl resources --json`.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "sandbox"))

from nfsandbox.digitalocean.testing import DOSandbox, FileServer, qcow2_image  # noqa: E402
from nfsandbox.testing import Inventory, ansible_env, run_playbook  # noqa: E402

pytestmark = [pytest.mark.sandbox]
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def sandbox(do_sandbox: DOSandbox) -> DOSandbox:
    return do_sandbox


@pytest.fixture
def do(sandbox):
    """Fast imports, no faults; afterwards, proof that nothing of DigitalOcean is left."""
    sandbox.set_faults({"import_delay": 0.5, "transfer_delay": 0.5})
    sandbox.clear_exchanges()
    yield sandbox
    sandbox.set_faults({})
    left = sandbox.leftovers()
    for image in sandbox.manager().get_my_images():  # one test's leak must not fail the next ones
        image.destroy()
    assert left == []


@pytest.fixture
def files(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "nixos.qcow2.gz").write_bytes(gzip.compress(qcow2_image(64 * MIB)))
    (root / "random.img.gz").write_bytes(gzip.compress(os.urandom(256 * 1024)))
    with FileServer(root) as server:
        yield server


def play(sandbox: DOSandbox, tmp_path: Path, tasks: list[dict[str, Any]], verbosity: int = 0):
    """Run `tasks` (module arguments, each with an optional `_check`) on localhost; every
    task's result (failed ones too) is returned, with the whole output."""
    work = tmp_path / ("play-%d" % len(list(tmp_path.glob("play-*"))))
    work.mkdir()
    out = work / "results.json"
    body = []
    for index, args in enumerate(tasks):
        args = dict(args)
        task = {
            "name": "task %d" % index,
            "nixforge.images.do_custom_image": args,
            "register": "r%d" % index,
            "ignore_errors": True,
        }
        if args.pop("_check", False):
            task["check_mode"] = True
        body.append(task)
    results = "[%s]" % ", ".join("r%d" % i for i in range(len(tasks)))
    body.append({"ansible.builtin.copy": {"dest": str(out), "content": "{{ %s | to_json }}" % results}})
    playbook = work / "play.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": body}]))
    inventory_file = work / "inventory.ini"
    inventory_file.write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    env = ansible_env(work, {**sandbox.env(), "ANSIBLE_VERBOSITY": str(verbosity)})
    env.pop("DIGITALOCEAN_END_POINT", None)  # the module must not need python-digitalocean's own variable
    proc = run_playbook(Inventory(inventory_file, work / "ssh_config", work / "known_hosts", env), playbook)
    return json.loads(out.read_text()), proc


def image_args(files: FileServer, build_id: str, **extra: Any) -> dict[str, Any]:
    args = {
        "name": "nixos-%s" % build_id,
        "build_id": build_id,
        "ttl": "1h",
        "url": files.url("nixos.qcow2.gz"),
        "region": "nyc3",
        "wait_timeout": 120,
        "poll_interval": 0.5,
    }
    args.update(extra)
    return args


def posts(sandbox: DOSandbox, path: str = "/v2/images") -> int:
    return sum(1 for e in sandbox.exchanges() if e["method"] == "POST" and e["path"].rstrip("/") == path)


def mine(sandbox: DOSandbox, build_id: str) -> list[dict[str, Any]]:
    tag = "nixforge-build-id:%s" % build_id
    return [r for r in sandbox.leftovers() if tag in r.get("tags", [])]


def test_import_transfer_rerun_absent_and_no_token_in_vvvv(do, files, tmp_path):
    args = image_args(files, "it-do-main", regions=["ams3", "sgp1"], description="sandbox image")
    (first, again), proc = play(do, tmp_path, [args, args], verbosity=4)
    assert not first.get("failed"), first.get("msg")
    assert first["changed"] is True and first["imported"] is True
    image = first["image"]
    assert image["status"] == "available" and sorted(image["regions"]) == ["ams3", "nyc3", "sgp1"]
    assert sorted(first["transferred"]) == ["ams3", "sgp1"]
    assert "nixforge-build-id:it-do-main" in image["tags"]
    assert again["changed"] is False and again["imported"] is False and again["image"]["id"] == image["id"]
    assert posts(do) == 1
    [stored] = mine(do, "it-do-main")
    assert stored["format"] == "qcow2" and stored["compression"] == "gzip"
    assert sorted(stored["regions"]) == ["ams3", "nyc3", "sgp1"]
    output = proc.stdout + proc.stderr
    assert "<127.0.0.1> EXEC" in output or "ESTABLISH LOCAL CONNECTION" in output  # really -vvvv
    assert do.token not in output
    assert files.url("nixos.qcow2.gz") not in output

    (gone, again) = play(do, tmp_path, [{"build_id": "it-do-main", "state": "absent"}] * 2)[0]
    assert gone["changed"] is True and gone["removed"] == [image["id"]]
    assert again["changed"] is False and again["removed"] == []
    assert mine(do, "it-do-main") == []


def test_check_mode_creates_nothing(do, files, tmp_path):
    [result] = play(do, tmp_path, [{**image_args(files, "it-do-check", regions=["ams3"]), "_check": True}])[0]
    assert result["changed"] is True and result["image"] == {}
    assert result["actions"] == [
        "import image nixos-it-do-check from http://127.0.0.1/... into nyc3",
        "transfer image nixos-it-do-check to ams3",
    ]
    assert posts(do) == 0


def test_refused_image_and_unreachable_url_fail_with_digitaloceans_message(do, files, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    refused, unreachable = play(
        do,
        tmp_path,
        [
            image_args(files, "it-do-refused", url=files.url("random.img.gz")),
            image_args(files, "it-do-unreach", url="http://127.0.0.1:%d/nixos.qcow2.gz" % closed),
        ],
    )[0]
    assert refused["failed"] and "We don't support the format of the image you provided" in refused["msg"]
    assert unreachable["failed"] and "We were unable to download your image" in unreachable["msg"]
    for result in (refused, unreachable):
        assert result["changed"] is True and result["image"]["id"]
    assert posts(do) == 2
    assert do.leftovers() == []


def test_timeout_fails_naming_wait_timeout(do, files, tmp_path):
    do.set_faults({"import_delay": 60})
    [result] = play(do, tmp_path, [image_args(files, "it-do-slow", wait_timeout=3)])[0]
    assert result["failed"] and "'wait_timeout'" in result["msg"] and "timed out" in result["msg"]
    assert result["changed"] is True and result["image"]["id"]
    assert result["rolled_back"] == ["import image nixos-it-do-slow from http://127.0.0.1/... into nyc3"]
    assert do.leftovers() == []


def test_bad_input_fails_before_anything_is_created(do, files, tmp_path):
    results = play(
        do,
        tmp_path,
        [
            image_args(files, "it-do-bad", region="mars1"),
            image_args(files, "it-do-bad", regions=["ams3", "nowhere"]),
            image_args(files, "it-do-bad", distribution="NixOS"),
            image_args(files, "it-do-bad", oauth_token="dop_v1_not_the_right_one"),
            image_args(files, "it-do-bad", tags={"bad tag": "x"}),
        ],
    )[0]
    assert [r.get("parameter") for r in results] == ["region", "regions", "distribution", "oauth_token", "tags"]
    assert all(r["failed"] and r["changed"] is False for r in results)
    assert posts(do) == 0 and do.leftovers() == []


def test_throttling_and_server_errors_still_succeed(do, files, tmp_path):
    do.set_faults(
        {
            "import_delay": 0.5,
            "transfer_delay": 0.5,
            "throttle_rate": 0.1,
            "server_error_rate": 0.05,
            "unavailable_rate": 0.05,
            "seed": 11,
        }
    )
    before = do.served_faults()
    args = image_args(files, "it-do-faults", regions=["ams3", "fra1"], poll_interval=0.2)
    (result, gone) = play(do, tmp_path, [args, {"build_id": "it-do-faults", "state": "absent"}])[0]
    assert not result.get("failed"), result.get("msg")
    assert sorted(result["image"]["regions"]) == ["ams3", "fra1", "nyc3"]
    assert result["retries"] > 0
    served = {k: v - before.get(k, 0) for k, v in do.served_faults().items()}
    assert served["429"] > 0 and served["500"] + served["503"] > 0
    assert not gone.get("failed"), gone.get("msg")
    assert gone["removed"] == [result["image"]["id"]]
    do.set_faults({})
    assert posts(do) >= 1 and len([e for e in do.exchanges() if e["status"] == 202]) == 1


# -- as strict as DigitalOcean: certificates, URLs, files, rate limits, lost answers ----------


def test_a_certificate_that_does_not_verify_fails_naming_ca_bundle(do, files, tmp_path):
    """HTTPS only: a CA that did not sign the API's certificate fails at once, naming the
    option; the sandbox's own CA (DIGITALOCEAN_CA_BUNDLE, from `sandboxctl env`) works."""
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA(organization_name="not the sandbox").cert_pem.write_to_path(str(other))
    result = play(do, tmp_path, [image_args(files, "it-do-ca", ca_bundle=str(other))])[0][0]
    assert result["failed"] is True and result["parameter"] == "ca_bundle", result.get("msg")
    assert "certificate" in result["msg"] and "'ca_bundle'" in result["msg"]
    assert result["retries"] == 0 and do.exchanges() == []  # no request got through
    assert mine(do, "it-do-ca") == []


def test_a_url_with_a_query_string_fails_before_the_import(do, files, tmp_path):
    """An authorized (pre-signed) URL: DigitalOcean refuses it, the module says so first."""
    url = files.url("nixos.qcow2.gz") + "?Authorization=3_20261206_downloadtoken"
    calls = [image_args(files, "it-do-q", url=url, _check=True), image_args(files, "it-do-q", url=url)]
    results, proc = play(do, tmp_path, calls, verbosity=4)
    for result in results:
        assert result["failed"] is True and result["parameter"] == "url", result.get("msg")
        assert "query string" in result["msg"] and "do_image_publish_url_mode=public" in result["msg"]
    assert "3_20261206_downloadtoken" not in proc.stdout + proc.stderr
    assert posts(do) == 0 and files.requests == [] and mine(do, "it-do-q") == []


def test_an_image_file_digitalocean_would_refuse_fails_before_any_call(do, files, tmp_path):
    big = tmp_path / "big.qcow2.gz"
    big.write_bytes(gzip.compress(qcow2_image(101 * 1024 * MIB)))  # a 101 GiB disk in a few KiB
    good = tmp_path / "nixos.qcow2.gz"
    good.write_bytes((tmp_path / "www" / "nixos.qcow2.gz").read_bytes())  # what `files` serves
    refused, checked = play(do, tmp_path, [image_args(files, "it-do-src", src=str(big)),
                                           image_args(files, "it-do-src", src=str(good), _check=True)])[0]  # fmt: skip
    assert refused["failed"] is True and refused["parameter"] == "src"
    assert "over DigitalOcean's limit of 100 GiB" in refused["msg"]
    assert not checked.get("failed"), checked.get("msg")
    assert checked["source"]["format"] == "qcow2" and checked["source"]["compression"] == "gzip"
    assert posts(do) == 0 and files.requests == []


def test_a_failed_import_is_not_listed_and_never_adopted(do, files, tmp_path):
    """DigitalOcean's way: a failed import is `deleted` with an error_message, readable by id
    but not listed; a re-run with the same name and build imports a new image."""
    bad = image_args(files, "it-do-fail", url=files.url("random.img.gz"), wait=False)
    started = play(do, tmp_path, [bad])[0][0]
    assert not started.get("failed"), started.get("msg")
    failed_id = started["image"]["id"]
    image = do.image(id=failed_id)
    deadline = time.monotonic() + 120
    while image.load().status != "deleted":  # the import ends on its own
        assert time.monotonic() < deadline, image.status
        time.sleep(0.2)
    assert "We don't support the format" in image.error_message
    listed = do.manager().get_data("images", params={"private": "true", "tag_name": "nixforge-build-id:it-do-fail"})
    assert listed["images"] == []
    again, gone = play(do, tmp_path, [image_args(files, "it-do-fail"), {"build_id": "it-do-fail", "state": "absent"}])[
        0
    ]
    assert not again.get("failed"), again.get("msg")
    assert again["imported"] is True and again["image"]["id"] != failed_id
    assert again["image"]["status"] == "available"
    assert gone["removed"] == [again["image"]["id"]]


def test_a_lost_create_answer_is_adopted_not_imported_twice(do, files, tmp_path):
    """The emulator applies the POST and loses its answer (a 500): the module finds the
    image by name and build tag before retrying, so there is exactly one."""
    do.set_faults({"import_delay": 0.5, "transfer_delay": 0.5, "lost_answer": 1, "match": "^POST /v2/images$"})
    before = do.served_faults()["lost_answer"]
    result, gone = play(do, tmp_path, [image_args(files, "it-do-lost"), {"build_id": "it-do-lost", "state": "absent"}])[
        0
    ]
    assert not result.get("failed"), result.get("msg")
    assert do.served_faults()["lost_answer"] == before + 1
    assert posts(do) == 1 and result["retries"] >= 1
    assert gone["removed"] == [result["image"]["id"]]


@pytest.mark.parametrize(
    "limits",
    [
        {"ratelimit_burst": 3, "ratelimit_burst_window": 2.0},  # DigitalOcean's 250/minute, scaled down
        {"ratelimit_limit": 4, "ratelimit_window": 3.0},  # DigitalOcean's 5,000/hour, scaled down
    ],
    ids=["burst", "hourly"],
)
def test_rate_limits_are_ridden_through_honouring_retry_after(do, files, tmp_path, limits):
    """Small limits through the knobs: the module gets 429s with retry-after, waits at
    least that long before its next request, and succeeds; every answer carries the
    ratelimit-* headers."""
    do.set_faults({"import_delay": 0.5, "transfer_delay": 0.5, **limits})
    before = do.served_faults()["ratelimited"]
    args = image_args(files, "it-do-rl", regions=["ams3"], poll_interval=0.5)
    result, gone = play(do, tmp_path, [args, {"build_id": "it-do-rl", "state": "absent"}])[0]
    do.set_faults({})
    assert not result.get("failed"), result.get("msg")
    assert not gone.get("failed"), gone.get("msg")
    assert do.served_faults()["ratelimited"] > before and result["retries"] > 0
    exchanges = [e for e in do.exchanges() if e["path"].startswith("/v2/")]
    throttled = [i for i, e in enumerate(exchanges) if e["status"] == 429]
    assert throttled
    for index in throttled:
        asked = float(exchanges[index]["response_headers"]["retry-after"])
        later = exchanges[index + 1 :]
        if later:  # the next request (the same process) came no sooner than asked
            assert later[0]["at"] - exchanges[index]["at"] >= asked - 0.05, (exchanges[index], later[0])
    for entry in exchanges:
        assert {"ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"} <= set(entry["response_headers"])
    assert gone["removed"] == [result["image"]["id"]]
