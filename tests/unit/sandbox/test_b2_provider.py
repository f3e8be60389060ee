"""The B2 provider as the daemon runs it, on a fake sandbox: real HTTPS on loopback, b2sdk.

No root needed (no namespaces); the same provider inside a running sandbox is tested by
tests/integration/test_sandbox_b2.py.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from b2sdk.v2 import B2Api, InMemoryAccountInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sandbox"))

from nfsandbox import b2
from nfsandbox.cli import env_lines
from nfsandbox.tls import CertificateAuthority


@dataclass
class FakeInstance:
    number: int
    work_dir: Path


class FakeSandbox:
    def __init__(self, tmp: Path) -> None:
        self.instance = FakeInstance(7, tmp / "work")
        self.ca = CertificateAuthority(tmp / "state")

    def port(self, name: str) -> int:
        assert name == "b2"
        return 0  # any free port; the provider publishes the one it got


@pytest.fixture
def provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sandbox = FakeSandbox(tmp_path)
    # start() sets SSL_CERT_FILE for the daemon's own clients: restored after the test
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(sandbox.ca.bundle))  # as `sandboxctl env` exports it
    prov = b2.Provider(sandbox)
    published = prov.start()
    yield prov, published
    prov.stop()


def test_start_publishes_what_clients_and_sandboxctl_env_need(provider) -> None:
    prov, published = provider
    env = dict(
        env_lines({"instance": 7, "control_url": "", "state_dir": "/x", "apt_proxy_url": "", "endpoints": published})
    )
    assert env["B2_API_URL"] == published["b2_download_url"] == f"https://127.0.0.1:{prov.http.address[1]}"
    assert env["NIXFORGE_SANDBOX_B2_PUBLIC_BUCKET"] == "nixforge-sandbox7-public"
    assert env["NIXFORGE_SANDBOX_B2_PRIVATE_BUCKET"] == "nixforge-sandbox7-private"
    master = B2Api(InMemoryAccountInfo())
    master.authorize_account(
        env["B2_API_URL"], env["NIXFORGE_SANDBOX_B2_MASTER_KEY_ID"], env["NIXFORGE_SANDBOX_B2_MASTER_KEY"]
    )
    assert {b.name for b in master.list_buckets()} == {"nixforge-sandbox7-public", "nixforge-sandbox7-private"}
    # the pipelines' key: exactly the collection's needs, on the public bucket, under nixforge/
    api = B2Api(InMemoryAccountInfo())
    api.authorize_account(env["B2_API_URL"], env["B2_APPLICATION_KEY_ID"], env["B2_APPLICATION_KEY"])
    allowed = api.account_info.get_allowed()
    assert sorted(allowed["capabilities"]) == ["deleteFiles", "listBuckets", "listFiles", "writeFiles"]
    assert allowed["bucketName"] == "nixforge-sandbox7-public"  # b2sdk.v2 speaks API v3: one bucket
    assert allowed["namePrefix"] == "nixforge/"
    reaper = B2Api(InMemoryAccountInfo())
    reaper.authorize_account(
        env["B2_API_URL"], env["NIXFORGE_SANDBOX_B2_REAPER_KEY_ID"], env["NIXFORGE_SANDBOX_B2_REAPER_KEY"]
    )
    reaper_allowed = reaper.account_info.get_allowed()
    assert sorted(reaper_allowed["capabilities"]) == sorted(allowed["capabilities"])
    assert reaper_allowed["bucketName"] is None  # every bucket: a v3 key names one at most
    assert env["B2_CA_BUNDLE"] == str(prov.sandbox.ca.bundle)
    assert prov.resources() == []  # fixture buckets and keys are not resources


def test_plain_http_is_not_answered(provider) -> None:
    _prov, published = provider
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(published["B2_API_URL"].replace("https://", "http://") + "/b2api/v4/b2_list_buckets", timeout=10)


def test_files_are_resources_on_disk_until_reset(provider) -> None:
    prov, published = provider
    api = B2Api(InMemoryAccountInfo())
    api.authorize_account(published["B2_API_URL"], published["b2_master_key_id"], published["b2_master_key"])
    bucket = api.get_bucket_by_name(published["b2_public_bucket"])
    bucket.upload_bytes(b"abc" * 1000, "x/y.img", file_info={"nixforge-build-id": "u1"})
    [res] = prov.resources()
    assert (res["type"], res["bucket"], res["name"], res["tags"]) == (
        "b2_file",
        "nixforge-sandbox7-public",
        "x/y.img",
        {"nixforge-build-id": "u1"},
    )
    stored = list((prov.sandbox.instance.work_dir / "b2" / "files").rglob("data"))
    assert [p.read_bytes() for p in stored] == [b"abc" * 1000]
    head = requests.head(f"{published['B2_API_URL']}/file/nixforge-sandbox7-public/x/y.img", timeout=10)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == "3000" and head.content == b""
    prov.set_faults({"service_unavailable": 1})
    assert prov.get_faults()["service_unavailable"] == 1
    prov.reset()
    assert prov.resources() == [] and prov.get_faults()["service_unavailable"] == 0
    assert not list((prov.sandbox.instance.work_dir / "b2" / "files").rglob("data"))


def test_bad_fault_knobs_are_a_value_error(provider) -> None:
    prov = provider[0]
    with pytest.raises(ValueError, match="unknown b2 fault knob"):
        prov.set_faults({"sometimes": True})
