"""Unit tests of do_custom_image against the DigitalOcean emulator in-process.

The emulator (tests/sandbox/nfsandbox/digitalocean/) runs its HTTP front on loopback and
really fetches the image URL from a file server started here, so python-digitalocean,
the module's client and the import state machine all run for real; no sandbox, no root.
The same module against the sandbox daemon is tests/integration/test_do_custom_image.py.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.nixforge.images.plugins.module_utils._base._retry import RetryPolicy
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean import _client as do_utils
from ansible_collections.nixforge.images.plugins.modules import do_custom_image

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "sandbox"))
from nfsandbox.digitalocean.api import DigitalOceanAPI
from nfsandbox.digitalocean.http import DigitalOceanHTTPServer
from nfsandbox.digitalocean.testing import FileServer, qcow2_image
from nfsandbox.tls import CertificateAuthority

MIB = 1024 * 1024


class Emulator:
    def __init__(self, api: DigitalOceanAPI, server: DigitalOceanHTTPServer, files: FileServer, root: Path):
        self.api, self.server, self.files, self.root = api, server, files, root
        self.url = api.base_url + "/v2/"

    def serve(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return self.files.url(name)

    def images(self):
        return self.api.resources()

    def calls(self, method: str, path: str) -> int:
        return sum(1 for e in self.server.server.recorder.list() if e["method"] == method and e["path"] == path)

    def faults(self, **knobs):
        self.api.set_faults({"import_delay": 0.2, "transfer_delay": 0.2, **knobs})


@pytest.fixture
def do(tmp_path, monkeypatch):
    for name in ("DIGITALOCEAN_TOKEN", "DO_API_TOKEN", "DIGITALOCEAN_API_URL", "DIGITALOCEAN_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    api = DigitalOceanAPI(work_dir=tmp_path / "work")
    ca = CertificateAuthority(tmp_path)
    server = DigitalOceanHTTPServer(api, ca.server_context("127.0.0.1"))
    server.start()
    # HTTPS only: the module trusts the emulator through its ca_bundle fallback
    monkeypatch.setenv("DIGITALOCEAN_CA_BUNDLE", str(ca.ca_cert))
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.setattr(do_utils, "DEFAULT_POLICY", RetryPolicy(max_attempts=8, base_delay=0.01, max_delay=0.05))
    with FileServer(root) as files:
        emulator = Emulator(api, server, files, root)
        emulator.faults()
        emulator.qcow2_url = emulator.serve("nixos.qcow2.gz", gzip.compress(qcow2_image(64 * MIB)))
        yield emulator
    server.stop()
    api.shutdown()


class _Exit(Exception):
    def __init__(self, kind, result):
        super().__init__(kind)
        self.kind = kind
        self.result = result


@pytest.fixture(autouse=True)
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


def run(do, check=False, **args):
    base = {
        "name": "nixos-b1",
        "build_id": "b1",
        "ttl": "1h",
        "url": do.qcow2_url,
        "region": "nyc3",
        "api_url": do.url,
        "oauth_token": do.api.token,
        "wait_timeout": 30,
        "poll_interval": 0.1,
    }
    base.update(args)
    base = {k: v for k, v in base.items() if v is not None}
    if check:
        base["_ansible_check_mode"] = True
    with patch_module_args(base):
        with pytest.raises(_Exit) as info:
            do_custom_image.DoCustomImage().execute()
    return info.value


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- present ---------------------------------------------------------------------------


def test_import_transfer_then_rerun_changes_nothing(do):
    out = run(do, regions=["ams3", "sgp1"], description="nixos", tags={"team": "ops"})
    assert out.kind == "exit", out.result.get("msg")
    r = out.result
    assert r["changed"] is True and r["imported"] is True
    assert r["actions"] == [
        "import image nixos-b1 from http://127.0.0.1/... into nyc3",
        "transfer image nixos-b1 to ams3",
        "transfer image nixos-b1 to sgp1",
    ]
    image = r["image"]
    assert image["status"] == "available"
    assert sorted(image["regions"]) == ["ams3", "nyc3", "sgp1"]
    assert image["min_disk_size"] == 1 and image["distribution"] == "Unknown"
    assert image["description"] == "nixos" and image["error_message"] == ""
    assert "nixforge-build-id:b1" in image["tags"] and "nixforge-pipeline:default" in image["tags"]
    assert "nixforge-expires-at:%s" % r["build"]["expires_at"] in image["tags"]
    assert "team:ops" in image["tags"]
    assert sorted(r["transferred"]) == ["ams3", "sgp1"]
    [stored] = do.images()
    assert stored["format"] == "qcow2" and stored["compression"] == "gzip"

    again = run(do, regions=["ams3", "sgp1"], description="nixos", tags={"team": "ops"})
    assert again.kind == "exit", again.result
    assert again.result["changed"] is False and again.result["imported"] is False
    assert again.result["transferred"] == [] and again.result["image"]["id"] == image["id"]
    assert do.calls("POST", "/v2/images") == 1
    assert len(do.images()) == 1

    # one more region later: only that transfer
    more = run(do, regions=["ams3", "sgp1", "fra1"], description="nixos", tags={"team": "ops"})
    assert more.result["actions"] == ["transfer image nixos-b1 to fra1"]
    assert "fra1" in more.result["image"]["regions"]


def test_check_mode_reports_the_same_actions_and_creates_nothing(do):
    planned = run(do, check=True, regions=["ams3"])
    assert planned.kind == "exit", planned.result
    assert planned.result["changed"] is True and planned.result["image"] == {}
    assert planned.result["imported"] is True and planned.result["transferred"] == ["ams3"]
    assert do.images() == [] and do.calls("POST", "/v2/images") == 0
    real = run(do, regions=["ams3"])
    assert real.result["actions"] == planned.result["actions"]


def test_adopts_an_image_still_importing(do):
    do.faults(import_delay=1.0)
    started = run(do, wait=False, regions=["ams3"])
    assert started.kind == "exit", started.result
    assert started.result["changed"] is True and started.result["image"]["status"] == "NEW"
    assert started.result["transferred"] == []
    adopted = run(do, regions=["ams3"])
    assert adopted.kind == "exit", adopted.result
    assert adopted.result["imported"] is False
    assert adopted.result["actions"] == ["transfer image nixos-b1 to ams3"]
    assert adopted.result["image"]["status"] == "available"
    assert do.calls("POST", "/v2/images") == 1


def test_adopted_image_gets_description_and_distribution_updated(do):
    run(do)
    out = run(do, description="new text", distribution="debian")
    assert out.result["actions"] == ["update image nixos-b1 (description, distribution)"]
    assert out.result["image"]["description"] == "new text"
    assert out.result["image"]["distribution"] == "Debian"


def test_refused_format_fails_with_digitaloceans_message_and_leaves_nothing(do):
    url = do.serve("random.img.gz", gzip.compress(os.urandom(256 * 1024)))
    out = run(do, url=url)
    assert out.kind == "fail"
    assert "We don't support the format of the image you provided" in out.result["msg"]
    assert out.result["changed"] is True and out.result["image"]["id"]
    assert do.images() == []


def test_unreachable_url_fails_with_digitaloceans_message(do):
    out = run(do, url="http://127.0.0.1:%d/nixos.qcow2.gz" % closed_port())
    assert out.kind == "fail"
    assert "We were unable to download your image" in out.result["msg"]
    assert do.images() == []


def test_timeout_fails_naming_wait_timeout_and_rolls_back(do):
    do.faults(import_delay=30)
    out = run(do, wait_timeout=1)
    assert out.kind == "fail"
    assert "'wait_timeout'" in out.result["msg"] and "timed out" in out.result["msg"]
    assert out.result["changed"] is True
    assert out.result["image"]["id"]
    assert out.result["rolled_back"] == ["import image nixos-b1 from http://127.0.0.1/... into nyc3"]
    assert do.images() == []


@pytest.mark.parametrize(
    ("args", "parameter", "text"),
    [
        ({"region": "mars1"}, "region", "unknown region 'mars1'"),
        ({"regions": ["ams3", "nowhere"]}, "regions", "unknown region 'nowhere'"),
        ({"region": "nyc2"}, "region", "takes no new resources"),
        ({"distribution": "NixOS"}, "distribution", "not a distribution"),
        ({"tags": {"team": "a b"}}, "tags", "cannot be a DigitalOcean tag"),
        ({"url": None}, "url", "no URL"),
        ({"url": "ftp://example.invalid/x"}, "url", "http"),
        ({"oauth_token": "wrong-token-123"}, "oauth_token", "refused the token"),
        ({"oauth_token": None}, "oauth_token", "DIGITALOCEAN_TOKEN, DO_API_TOKEN"),
        ({"api_url": "api.digitalocean.com"}, "api_url", "not an http(s) URL"),
    ],
)
def test_bad_input_fails_before_creating_anything(do, args, parameter, text):
    out = run(do, **args)
    assert out.kind == "fail", out.result
    assert out.result["parameter"] == parameter
    assert text in out.result["msg"]
    assert "Traceback" not in out.result["msg"]
    assert do.calls("POST", "/v2/images") == 0 and do.images() == []


def test_token_from_the_environment_and_never_shown(do, monkeypatch):
    monkeypatch.setenv("DO_API_TOKEN", do.api.token)
    out = run(do, oauth_token=None)
    assert out.kind == "exit", out.result.get("msg")
    assert do.api.token not in json.dumps(out.result)
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", "dop_v1_wrongwrongwrong")
    failed = run(do, oauth_token=None)
    assert failed.result["parameter"] == "oauth_token"
    assert "dop_v1_wrongwrongwrong" not in json.dumps(failed.result)


def test_throttling_and_server_errors_are_retried(do):
    do.faults(throttle=2, server_error=1, unavailable=1, throttle_rate=0.2, seed=3)
    out = run(do, regions=["ams3"])
    assert out.kind == "exit", out.result.get("msg")
    assert out.result["image"]["status"] == "available"
    assert out.result["retries"] >= 4
    served = do.api.faults.snapshot()["served"]
    assert served["429"] >= 2 and served["500"] >= 1 and served["503"] >= 1
    assert len(do.images()) == 1


def test_create_retried_after_a_5xx_adopts_what_the_first_attempt_made(do, monkeypatch):
    # a 5xx answer that hides a successful create: the emulator creates, then we lose the answer
    original = do.api._create_image
    calls = []

    def create_then_fail(query, body):
        calls.append(1)
        status, answer = original(query, body)
        if len(calls) == 1:
            from nfsandbox.digitalocean.api import ApiError

            raise ApiError(502, "Bad gateway")
        return status, answer

    monkeypatch.setattr(do.api, "_create_image", create_then_fail)
    out = run(do)
    assert out.kind == "exit", out.result.get("msg")
    assert len(calls) == 1 and len(do.images()) == 1
    assert out.result["retries"] == 1


# -- absent ----------------------------------------------------------------------------


def test_absent_by_name_then_by_build_id(do):
    run(do, name="one", wait=False)
    run(do, name="two", wait=False)
    run(do, name="other", build_id="b2", wait=False)
    out = run(do, state="absent", name="one")
    assert out.kind == "exit", out.result.get("msg")
    assert out.result["changed"] is True and len(out.result["removed"]) == 1
    assert sorted(i["name"] for i in do.images()) == ["other", "two"]
    check = run(do, check=True, state="absent", name=None)
    assert check.result["changed"] is True and len(check.result["removed"]) == 1
    assert len(do.images()) == 2
    out = run(do, state="absent", name=None)
    assert out.result["actions"] == check.result["actions"]  # check mode reported what the run did
    assert out.result["actions"][0].startswith("delete image two (")
    assert [i["name"] for i in do.images()] == ["other"]
    again = run(do, state="absent", name=None)
    assert again.result["changed"] is False and again.result["removed"] == []


# -- certificates, URLs and files DigitalOcean would refuse -------------------------------


def test_a_certificate_that_does_not_verify_fails_at_once_naming_ca_bundle(do, tmp_path, monkeypatch):
    other = CertificateAuthority(tmp_path / "other")  # a CA that did not sign the emulator's certificate
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(do_ca_bundle()))  # the option wins over the environment
    out = run(do, ca_bundle=str(other.ca_cert))
    assert out.kind == "fail"
    assert out.result["parameter"] == "ca_bundle" and out.result["retries"] == 0
    assert "certificate" in out.result["msg"] and "'ca_bundle'" in out.result["msg"]
    assert do.server.server.recorder.list() == [] and do.images() == []
    missing = run(do, ca_bundle=str(tmp_path / "nope.pem"))
    assert missing.result["parameter"] == "ca_bundle" and "is not a file" in missing.result["msg"]


def do_ca_bundle() -> str:
    return os.environ["DIGITALOCEAN_CA_BUNDLE"]


@pytest.mark.parametrize("check", [True, False], ids=["check-mode", "real"])
def test_a_url_with_a_query_string_fails_before_importing(do, check):
    out = run(do, check=check, url=do.qcow2_url + "?Authorization=3_20261206_secret")
    assert out.kind == "fail"
    assert out.result["parameter"] == "url" and "query string" in out.result["msg"]
    assert "do_image_publish_url_mode=public" in out.result["msg"]
    assert "3_20261206_secret" not in json.dumps(out.result)
    assert do.calls("POST", "/v2/images") == 0 and do.images() == []


@pytest.mark.parametrize("check", [True, False], ids=["check-mode", "real"])
def test_an_image_file_digitalocean_would_refuse_fails_before_any_call(do, tmp_path, check):
    big = tmp_path / "big.qcow2.gz"
    big.write_bytes(gzip.compress(qcow2_image(101 * 1024**3)))  # a 101 GiB disk, in a few KiB
    out = run(do, check=check, src=str(big))
    assert out.kind == "fail"
    assert out.result["parameter"] == "src" and "over DigitalOcean's limit of 100 GiB" in out.result["msg"]
    assert do.server.server.recorder.list() == []  # nothing asked of DigitalOcean either
    zst = tmp_path / "nixos.img.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 64)
    refused = run(do, check=check, src=str(zst))
    assert refused.result["parameter"] == "src" and "zstd" in refused.result["msg"]


def test_a_good_image_file_is_described(do, tmp_path):
    good = tmp_path / "nixos.qcow2.gz"
    good.write_bytes(gzip.compress(qcow2_image(64 * MIB)))
    out = run(do, check=True, src=str(good))
    assert out.kind == "exit", out.result.get("msg")
    assert out.result["source"]["format"] == "qcow2" and out.result["source"]["compression"] == "gzip"
    assert out.result["source"]["virtual_size"] == 64 * MIB


def test_a_failed_or_deleted_image_of_the_build_is_never_adopted(do, monkeypatch):
    """Even where a listing shows failed imports (the emulator, like DigitalOcean, does not):
    an image `deleted` with an error_message, or `retired`, is not the build's image."""
    refused = run(do, url=do.serve("random.img.gz", gzip.compress(os.urandom(64 * 1024))), wait=False)
    failed_id = refused.result["image"]["id"]
    failed = do.api.images[failed_id]
    deadline = time.monotonic() + 60
    while failed.status != "deleted":  # the emulator's import ends (and fails) on its own
        assert time.monotonic() < deadline, failed.status
        time.sleep(0.05)
    original = do.api._list_images

    def list_with_failed(query, body):
        status, answer = original(query, body)
        answer["images"] = [dict(failed.view(), status="deleted", error_message="We don't support it")] + answer[
            "images"
        ]
        return status, answer

    monkeypatch.setattr(do.api, "_list_images", list_with_failed)
    out = run(do)
    assert out.kind == "exit", out.result.get("msg")
    assert out.result["imported"] is True and out.result["image"]["id"] != failed_id
    assert out.result["image"]["status"] == "available"
