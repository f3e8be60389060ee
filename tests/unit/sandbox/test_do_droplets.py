"""Account keys, droplet create checks, the metadata document and QEMU's command line of the
DigitalOcean emulator, in-process (no sandbox: custom images do not boot here; booting is
tests/integration/test_sandbox_droplets.py)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sandbox"))

from nfsandbox.digitalocean import droplets, metadata, qemu
from nfsandbox.digitalocean.api import DigitalOceanAPI
from nfsandbox.digitalocean.http import DigitalOceanHTTPServer
from nfsandbox.digitalocean.keys import fingerprint
from nfsandbox.digitalocean.testing import FileServer, qcow2_image
from nfsandbox.tls import CertificateAuthority

GIB = 1024**3


@pytest.fixture
def do(tmp_path, monkeypatch):
    api = DigitalOceanAPI(work_dir=tmp_path / "work")
    ca = CertificateAuthority(tmp_path)
    server = DigitalOceanHTTPServer(api, ca.server_context("127.0.0.1"))
    server.start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.bundle))  # HTTPS only
    api.set_faults({"import_delay": 0.1, "transfer_delay": 0.1})

    def call(method: str, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {api.token}"}
        return requests.request(method, api.base_url + path, headers=headers, timeout=10, **kw)

    call.api = api
    yield call
    server.stop()
    api.shutdown()


def _keypair(tmp_path: Path, name: str = "id") -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    return (tmp_path / f"{name}.pub").read_text().strip()


def _image(do, tmp_path: Path, virtual_size: int = GIB) -> dict:
    root = tmp_path / "www"
    root.mkdir(exist_ok=True)
    (root / "d.qcow2.gz").write_bytes(gzip.compress(qcow2_image(virtual_size)))
    with FileServer(root) as files:
        body = {"name": "img", "url": files.url("d.qcow2.gz"), "region": "nyc3"}
        image = do("POST", "/v2/images", json=body).json()["image"]
        deadline = time.monotonic() + 30
        while image["status"] != "available":
            assert time.monotonic() < deadline, image
            time.sleep(0.05)
            image = do("GET", f"/v2/images/{image['id']}").json()["image"]
    return image


def test_fingerprint_is_ssh_keygens_md5(tmp_path):
    public = _keypair(tmp_path)
    command = ["ssh-keygen", "-l", "-E", "md5", "-f", str(tmp_path / "id.pub")]
    out = subprocess.run(command, capture_output=True, check=True)
    assert fingerprint(public) == out.stdout.decode().split()[1].removeprefix("MD5:")
    for bad in (
        "ssh-ed25519",
        "ssh-ed25519 not-base64!",
        "ssh-foo " + public.split()[1],
        "ssh-rsa " + public.split()[1],
    ):
        with pytest.raises(ValueError, match="Key invalid"):
            fingerprint(bad)


def test_account_keys_lifecycle(do, tmp_path):
    public = _keypair(tmp_path)
    created = do("POST", "/v2/account/keys", json={"name": "build-1", "public_key": public})
    assert created.status_code == 201
    key = created.json()["ssh_key"]
    assert set(key) == {"id", "fingerprint", "public_key", "name"} and key["public_key"] == public
    again = do("POST", "/v2/account/keys", json={"name": "other", "public_key": public})
    assert again.status_code == 422 and again.json()["message"] == "SSH Key is already in use on your account"
    assert do("POST", "/v2/account/keys", json={"name": "", "public_key": public}).status_code == 422
    assert do("POST", "/v2/account/keys", json={"name": "x", "public_key": "ssh-ed25519"}).status_code == 422
    assert do("GET", f"/v2/account/keys/{key['id']}").json()["ssh_key"] == key
    assert do("GET", f"/v2/account/keys/{key['fingerprint']}").json()["ssh_key"] == key
    renamed = do("PUT", f"/v2/account/keys/{key['id']}", json={"name": "renamed"}).json()["ssh_key"]
    assert renamed["name"] == "renamed"
    listed = do("GET", "/v2/account/keys", params={"per_page": 1}).json()
    assert listed["meta"]["total"] == 1 and listed["ssh_keys"][0]["id"] == key["id"]
    assert [r["type"] for r in do.api.resources()] == ["do_ssh_key"]
    assert do("DELETE", f"/v2/account/keys/{key['fingerprint']}").status_code == 204
    missing = do("GET", f"/v2/account/keys/{key['id']}")
    assert missing.status_code == 404 and missing.json()["id"] == "not_found"
    assert do.api.resources() == []


def test_droplet_create_checks_what_digitalocean_checks(do, tmp_path):
    big = _image(do, tmp_path, virtual_size=30 * GIB)  # min_disk_size 30: not on a 25 GB disk
    good = {"name": "web-1", "region": "nyc3", "size": "s-1vcpu-1gb", "image": big["id"]}
    cases = [
        ({"region": "mars1"}, "invalid region"),
        ({"region": "nyc2"}, "invalid region"),  # listed, takes no new droplets
        ({"size": "s-99vcpu"}, "invalid size"),
        ({"image": 1}, "invalid image"),
        ({"image": "no-such-slug"}, "invalid image"),
        ({"region": "ams3", "size": "s-2vcpu-4gb"}, "not available in the region ams3"),
        ({}, "smaller than the image's minimum disk size of 30 GB"),
        ({"size": "s-2vcpu-4gb", "ssh_keys": [12345]}, "invalid ssh key ids for Droplet creation: 12345"),
        ({"size": "s-2vcpu-4gb", "user_data": "x" * (64 * 1024 + 1)}, "user_data is limited"),
        ({"size": "s-2vcpu-4gb", "name": "under_score"}, "valid hostname characters"),
        ({"size": "s-2vcpu-4gb", "name": None}, "name is required"),
    ]
    for change, message in cases:
        answer = do("POST", "/v2/droplets", json={**good, **change})
        assert answer.status_code == 422, (change, answer.text)
        assert set(answer.json()) == {"id", "message", "request_id"} and message in answer.json()["message"]
    assert [r["type"] for r in do.api.resources()] == ["do_image"]  # nothing was created
    answer = do("POST", "/v2/droplets", json={**good, "size": "s-2vcpu-4gb"})
    assert answer.status_code == 202
    droplet = answer.json()["droplet"]
    assert droplet["image"] == do("GET", f"/v2/images/{big['id']}").json()["image"]
    assert (droplet["status"], droplet["networks"]["v4"], droplet["disk"]) == ("new", [], 80)


def test_droplet_with_keys_becomes_active_and_is_deleted_by_tag(do, tmp_path, monkeypatch):
    image = _image(do, tmp_path)
    key = do("POST", "/v2/account/keys", json={"name": "k", "public_key": _keypair(tmp_path)}).json()["ssh_key"]
    body = {"name": "d", "region": "nyc3", "size": "s-1vcpu-1gb", "image": image["id"], "tags": ["b:1"]}
    first = do("POST", "/v2/droplets", json={**body, "ssh_keys": [key["id"]]}).json()["droplet"]
    do("POST", "/v2/droplets", json={**body, "ssh_keys": [key["fingerprint"]]})
    monkeypatch.setattr(droplets, "DROPLET_BOOT_SECONDS", 0)  # no sandbox here: nothing boots
    view = do("GET", f"/v2/droplets/{first['id']}").json()["droplet"]
    assert view["status"] == "active" and view["networks"]["v4"][0]["type"] == "public"
    assert do("DELETE", "/v2/droplets", params={"tag_name": "b:1"}).status_code == 204
    assert [r["type"] for r in do.api.resources()] == ["do_image", "do_ssh_key"]


def test_sizes_list_the_size_table(do):
    sizes = {s["slug"]: s for s in do("GET", "/v2/sizes").json()["sizes"]}
    assert sizes["s-1vcpu-512mb-10gb"]["disk"] == 10 and "nyc3" in sizes["s-1vcpu-1gb"]["regions"]


def test_metadata_paths_as_digitalocean_serves_them():
    interface = {"ip_address": "10.213.1.12", "netmask": "255.255.255.0", "gateway": "10.213.1.1", "mac": "02:00:0"}
    doc = metadata.document(
        7, "web-1", "nyc3", ["ssh-ed25519 AAA a", "ssh-rsa BBB b"], "#cloud-config\n", interface, ["t"]
    )

    def get(path: str) -> tuple[int, str]:
        status, _ctype, body = metadata.lookup(doc, path)
        return status, body.decode()

    assert get("/metadata/v1/id") == (200, "7")
    assert get("/metadata/v1/hostname") == (200, "web-1")
    assert get("/metadata/v1/public-keys") == (200, "ssh-ed25519 AAA a\nssh-rsa BBB b")
    assert get("/metadata/v1/user-data") == (200, "#cloud-config\n")
    assert get("/metadata/v1/interfaces/public/0/ipv4/address") == (200, "10.213.1.12")
    assert get("/metadata/v1/interfaces/public/0/type") == (200, "public")
    assert get("/metadata/v1/interfaces/") == (200, "public/\nprivate/")
    assert get("/metadata/v1/tags/") == (200, "t")
    assert get("/metadata/v1/floating_ip/ipv4/active") == (200, "false")
    index = get("/metadata/v1/")[1].splitlines()
    assert {"id", "hostname", "user-data", "public-keys", "region", "interfaces/"} <= set(index)
    assert get("/metadata/v1/nothing")[0] == get("/other")[0] == 404
    status, ctype, body = metadata.lookup(doc, "/metadata/v1.json")
    assert (status, ctype) == (200, "application/json") and b'"droplet_id": 7' in body
    no_user_data = metadata.document(7, "w", "nyc3", [], None, interface, [])
    assert metadata.lookup(no_user_data, "/metadata/v1/user-data")[2] == b""


def test_kvm_only_when_it_is_not_slower_than_tcg():
    assert qemu.kvm_verdict(0.2, 0.25)
    assert not qemu.kvm_verdict(0.2, 7.1)  # what this machine kind measured: /dev/kvm there, crawling
    assert not qemu.kvm_verdict(0.2, None)


def test_qemu_command_forwards_ssh_and_says_digitalocean(tmp_path):
    argv = qemu.command("droplet-7", "tcg", 8192, tmp_path / "d.qcow2", tmp_path / "c.log", "10.213.1.12", "02:00", 7)
    assert argv[argv.index("-accel") + 1] == "tcg" and argv[argv.index("-m") + 1] == "1024"
    assert "user,model=virtio-net-pci,mac=02:00,hostfwd=tcp:10.213.1.12:22-:22" in argv
    assert f"file:{tmp_path / 'c.log'}" in argv
    assert "type=1,manufacturer=DigitalOcean,product=Droplet,serial=7" in argv


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils not installed (make deps)")
def test_prepare_disk_never_writes_the_stored_image(tmp_path):
    stored = tmp_path / "stored.img"
    stored.write_bytes(gzip.compress(qcow2_image(GIB)))
    before = stored.read_bytes()
    folder = tmp_path / "droplet"
    folder.mkdir()
    disk = qemu.prepare_disk(stored, "qcow2", "gzip", folder, 25)
    info = subprocess.run(["qemu-img", "info", "--output=json", str(disk)], capture_output=True, check=True).stdout
    assert b'"virtual-size": 26843545600' in info and b"base.qcow2" in info
    assert stored.read_bytes() == before


def test_droplet_addresses_are_reserved_in_the_host_pool():
    """A droplet's address index is never handed to a builder host, and comes back on release."""
    from types import SimpleNamespace

    from nfsandbox.hosts import HostPool

    pool = HostPool(SimpleNamespace(max_hosts=3, number=9), None, None, None, "")
    first, second = pool.reserve("droplet-1"), pool.reserve("droplet-2")
    assert first != second and pool._allocate() not in (first, second)
    pool.release(first)
    assert {pool._allocate() for _round in range(3)} >= {first}
