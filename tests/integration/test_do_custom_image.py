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
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "sandbox"))

from nfsandbox.digitalocean.testing import DOSandbox, FileServer, qcow2_image  # noqa: E402
from nfsandbox.testing import Inventory, ansible_env, run_playbook, sandbox_missing  # noqa: E402

pytestmark = [pytest.mark.sandbox]
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def sandbox(sandbox_instance) -> DOSandbox:
    state, reason = DOSandbox.state_of(sandbox_instance.instance.number)
    if state is None:
        sandbox_missing(reason)
    return DOSandbox(state)


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
    assert gone["changed"] is True and gone["deleted"] == [image["id"]]
    assert again["changed"] is False and again["deleted"] == []
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
    assert gone["deleted"] == [result["image"]["id"]]
    do.set_faults({})
    assert posts(do) >= 1 and len([e for e in do.exchanges() if e["status"] == 202]) == 1
