"""A droplet of the sandbox-built DigitalOcean image boots and lets us in over SSH.

The image is built as the pipeline builds it, by the sandbox image definition
(roles/nixos_image/files/images/sandbox/mkimage.py) on a sandbox builder host, with a
module of ours; it is imported into the emulator over HTTP. The droplet gets an account
key and user data with an ed25519 host key (as plugins/module_utils/_userdata.py writes
it); we wait for the guest's "ssh up" on the droplet's serial console, log in with that
host key pinned, check /etc/nixforge-image, delete, and nothing is left.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SANDBOX_IMAGE = REPO / "roles" / "nixos_image" / "files" / "images" / "sandbox"
sys.path.insert(0, str(REPO / "tests" / "sandbox"))
sys.path.insert(0, str(REPO / ".build" / "collections"))  # `make collection`

from nfsandbox.digitalocean.testing import DOSandbox, FileServer  # noqa: E402
from nfsandbox.testing import ssh_keypair  # noqa: E402

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]
SSH_UP = b"nixforge-sandbox: ssh up"
GUARD = 1200.0  # seconds; a guard against a hang, the wait itself ends on the console line


@pytest.fixture(scope="module")
def do(do_sandbox: DOSandbox) -> DOSandbox:
    return do_sandbox


def build_image(sandbox_instance: Any, tmp_path: Path, module: Path) -> Path:
    """nixos.qcow2.gz built by mkimage.py on a sandbox builder host, fetched here."""
    out = tmp_path / "www"
    out.mkdir()
    with sandbox_instance.builder_host(tmp_path / "builder", owner="pytest-droplet-boot") as (host, inv):
        ssh = ["-F", str(inv.ssh_config)]
        target = f"admin@{host['ip']}"
        subprocess.run(["scp", *ssh, "-q", "-r", str(SANDBOX_IMAGE), f"{target}:/tmp/def"], check=True, timeout=120)
        subprocess.run(["scp", *ssh, "-q", str(module), f"{target}:/tmp/module.nix"], check=True, timeout=120)
        # as the flake's derivation runs it: its PATH, as root (Nix builds as root on the builder;
        # the image's files take the owner of what mke2fs copies, and dropbear wants /root root's)
        build = "sudo env PATH=/usr/bin:/bin:/usr/sbin:/sbin python3 /tmp/def/mkimage.py do /tmp/out /tmp/module.nix"
        proc = subprocess.run(["ssh", *ssh, target, build], capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        subprocess.run(["scp", *ssh, "-q", f"{target}:/tmp/out/nixos.qcow2.gz", str(out)], check=True, timeout=300)
    return out / "nixos.qcow2.gz"


def wait_console(path: Path, droplet: dict[str, Any], do: DOSandbox) -> float:
    """Until the guest says its SSH server listens; fails if QEMU is gone first."""
    started = time.monotonic()
    while SSH_UP not in (path.read_bytes() if path.exists() else b""):
        entry = [r for r in do.do_resources() if r["type"] == "do_droplet" and r["id"] == droplet["id"]]
        assert entry and "qemu" in entry[0]["processes"], f"QEMU of droplet {droplet['id']} is gone: {entry}"
        assert time.monotonic() - started < GUARD, path.read_bytes()[-3000:].decode(errors="replace")
        time.sleep(0.5)
    return time.monotonic() - started


def test_droplet_boots_the_sandbox_image_and_lets_the_account_key_in(do, sandbox_instance, tmp_path):
    from ansible_collections.nixforge.images.plugins.module_utils._base import _userdata
    from ansible_collections.nixforge.images.plugins.module_utils._base._sshkeys import HostKey

    module = tmp_path / "module.nix"
    module.write_text('{ ... }: { networking.hostName = "droplet-boot"; }\n')
    image_file = build_image(sandbox_instance, tmp_path, module)
    assert gzip.open(image_file).read(4) == b"QFI\xfb"
    key, public = ssh_keypair(tmp_path / "keys")
    host_key, host_public = ssh_keypair(tmp_path / "keys", "host", comment="root@droplet-boot")
    user_data = _userdata.render(_userdata.host_key_config(HostKey("ed25519", host_key.read_text(), host_public)))

    do.set_faults({"import_delay": 0.2})
    try:
        with FileServer(image_file.parent) as files:
            body = {"name": "droplet-boot", "url": files.url(image_file.name), "region": "nyc3"}
            image = do.call("POST", "/v2/images", body, expect=202)["image"]
            while image["status"] == "NEW":
                time.sleep(0.2)
                image = do.call("GET", f"/v2/images/{image['id']}", expect=200)["image"]
    finally:
        do.set_faults({})
    assert image["status"] == "available", image
    account_key = do.call("POST", "/v2/account/keys", {"name": "droplet-boot", "public_key": public}, 201)["ssh_key"]
    created_at = time.monotonic()
    body = {"name": "droplet-boot", "region": "nyc3", "size": "s-1vcpu-512mb-10gb", "image": image["id"]}
    body.update(ssh_keys=[account_key["fingerprint"]], user_data=user_data, tags=["nixforge-build-id:droplet-boot"])
    droplet = do.call("POST", "/v2/droplets", body, expect=202)["droplet"]
    try:
        while droplet["status"] == "new":
            time.sleep(0.2)
            droplet = do.call("GET", f"/v2/droplets/{droplet['id']}", expect=200)["droplet"]
        assert droplet["status"] == "active", droplet
        address = droplet["networks"]["v4"][0]["ip_address"]
        [entry] = [r for r in do.do_resources() if r["type"] == "do_droplet"]
        waited = wait_console(Path(entry["console"]), droplet, do)
        known = tmp_path / "known_hosts"
        known.write_text(f"{address} {' '.join(host_public.split()[:2])}\n")
        ssh = ["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}"]
        ssh += ["-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]
        ssh += ["-F", "/dev/null", f"root@{address}", "cat /etc/nixforge-image"]
        proc = subprocess.run(ssh, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        print(f"droplet: SSH up {time.monotonic() - created_at:.1f}s after create (console wait {waited:.1f}s)")
        lines = proc.stdout.splitlines()
        assert lines[0] == "nixforge sandbox image (do)"
        assert f"module: module.nix sha256:{hashlib.sha256(module.read_bytes()).hexdigest()}" in lines
    finally:
        do.call("DELETE", f"/v2/droplets/{droplet['id']}", expect=204)
        do.call("DELETE", f"/v2/account/keys/{account_key['id']}", expect=204)
        do.call("DELETE", f"/v2/images/{image['id']}", expect=204)
    assert do.leftovers() == [], json.dumps(do.leftovers())
