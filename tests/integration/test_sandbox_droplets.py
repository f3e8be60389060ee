"""Droplets of the sandbox's DigitalOcean emulator really run their image under QEMU.

The image imported here is a qcow2 without a boot loader (an image that never boots): the
droplet still becomes `active`, QEMU runs in the droplet's network namespace with its
hostfwd port on the droplet's public address, and the metadata service answers the
droplet's own metadata inside that namespace. Deleting (by id, by tag, during boot) and
`sandboxctl down` leave no process, namespace or file. (Booting a real image and logging in
over SSH: test_sandbox_droplet_boot.py, once the sandbox image is bootable.)
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "sandbox"))

from nfsandbox import client, procs  # noqa: E402
from nfsandbox.config import Instance  # noqa: E402
from nfsandbox.digitalocean.testing import DOSandbox, FileServer, qcow2_image  # noqa: E402
from nfsandbox.testing import sandboxctl, ssh_keypair  # noqa: E402

pytestmark = [pytest.mark.sandbox]
GIB = 1024**3
PROBE = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"


@pytest.fixture(scope="module")
def sandbox(do_sandbox: DOSandbox) -> DOSandbox:
    return do_sandbox


@pytest.fixture
def image(sandbox, tmp_path):
    """An imported qcow2 (gzip) without a boot loader; removed afterwards, then nothing may be left."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "disk.qcow2.gz").write_bytes(gzip.compress(qcow2_image(2 * GIB)))
    sandbox.set_faults({"import_delay": 0.2})
    with FileServer(root) as files:
        body = {"name": "droplet-test", "url": files.url("disk.qcow2.gz"), "region": "nyc3"}
        made = sandbox.call("POST", "/v2/images", body, expect=202)["image"]
        while made["status"] == "NEW":
            time.sleep(0.1)
            made = sandbox.call("GET", f"/v2/images/{made['id']}", expect=200)["image"]
    assert made["status"] == "available", made
    yield made
    sandbox.set_faults({})
    sandbox.call("DELETE", f"/v2/images/{made['id']}")
    assert sandbox.leftovers() == []


def wait_not_new(do: DOSandbox, ident: int) -> tuple[dict[str, Any], float]:
    """The droplet once it left `new`, and how long that took (QEMU's start bounds it)."""
    started = time.monotonic()
    while True:
        droplet = do.call("GET", f"/v2/droplets/{ident}", expect=200)["droplet"]
        if droplet["status"] != "new":
            return droplet, time.monotonic() - started
        assert time.monotonic() - started < 300, "droplet still new after 300 s"
        time.sleep(0.1)


def in_netns(netns: str, url: str) -> str:
    argv = ["ip", "netns", "exec", netns, sys.executable, "-I", "-c", PROBE, url]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def qemu_argv(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def qemu_names(inst: Instance) -> list[str]:
    """The `-name` of every QEMU of the instance `inst` (its disk is under the instance's work
    dir): the other workers' instances run QEMUs of droplets numbered alike."""
    mine = "file=%s/" % (inst.work_dir / "digitalocean")
    pgrep = subprocess.run(["pgrep", "-x", "qemu-system-x86"], capture_output=True, text=True, check=False)
    out = []
    for pid in pgrep.stdout.split():
        try:
            argv = qemu_argv(int(pid))
        except OSError:
            continue
        if any(arg.startswith(mine) for arg in argv) and "-name" in argv:
            out.append(argv[argv.index("-name") + 1])
    return out


def test_droplet_runs_qemu_with_its_metadata_and_delete_removes_everything(sandbox, image, tmp_path):
    _key, public = ssh_keypair(tmp_path)
    key = sandbox.call("POST", "/v2/account/keys", {"name": "droplet-test", "public_key": public}, 201)["ssh_key"]
    user_data = "#cloud-config\nhostname: ignored-here\n"
    body = {"name": "boot-1", "region": "nyc3", "size": "s-1vcpu-512mb-10gb", "image": image["id"]}
    body.update(ssh_keys=[key["id"]], user_data=user_data, tags=["nixforge-build-id:droplet-test"])
    created = sandbox.call("POST", "/v2/droplets", body, expect=202)["droplet"]
    assert created["status"] == "new" and created["networks"]["v4"] == []
    droplet, seconds = wait_not_new(sandbox, created["id"])
    print(f"droplet active after {seconds:.2f}s")
    assert droplet["status"] == "active" and droplet["image"]["id"] == image["id"]
    assert (droplet["disk"], droplet["size_slug"]) == (10, "s-1vcpu-512mb-10gb")
    [v4] = droplet["networks"]["v4"]
    address = v4["ip_address"]
    with socket.create_connection((address, 22), timeout=10):
        pass  # QEMU's hostfwd answers on the public address (the guest itself never boots)

    [entry] = [r for r in sandbox.do_resources() if r["type"] == "do_droplet"]
    assert entry["address"] == address and entry["status"] == "active"
    qemu_pid, server_pid = entry["processes"]["qemu"], entry["processes"]["metadata"]
    listed = {r["id"] for r in sandbox.do_resources() if r["type"] == "do_droplet_process"}
    assert listed == {qemu_pid, server_pid}
    argv = qemu_argv(qemu_pid)
    assert argv[argv.index("-name") + 1] == f"droplet-{droplet['id']}"
    assert f"hostfwd=tcp:{address}:22-:22" in argv[argv.index("-nic") + 1]
    disk = Path(argv[argv.index("-drive") + 1].split(",")[0].removeprefix("file="))
    assert disk.is_file()
    console = Path(entry["console"])
    assert console.is_file() and str(console).startswith(sandbox.state["state_dir"])
    debug = sandbox.call("GET", "/_sandbox/droplets", expect=200)["droplets"]
    assert [(d["id"], d["console"]) for d in debug] == [(droplet["id"], str(console))]

    base = "http://169.254.169.254/metadata/v1"
    netns = entry["netns"]
    assert in_netns(netns, f"{base}/public-keys") == public
    assert in_netns(netns, f"{base}/user-data") == user_data
    assert in_netns(netns, f"{base}/hostname") == "boot-1"
    assert in_netns(netns, f"{base}/id") == str(droplet["id"])
    assert in_netns(netns, f"{base}/interfaces/public/0/ipv4/address") == address
    assert json.loads(in_netns(netns, f"{base}.json"))["region"] == "nyc3"

    sandbox.call("DELETE", f"/v2/droplets/{droplet['id']}", expect=204)
    assert [r["type"] for r in sandbox.do_resources() if r["type"].startswith("do_droplet")] == []
    for pid in (qemu_pid, server_pid):
        assert procs.start_time(pid) is None, f"process {pid} survived the delete"
    assert netns not in netns_names() and not disk.exists() and not disk.parent.exists()
    sandbox.call("DELETE", f"/v2/account/keys/{key['fingerprint']}", expect=204)


def test_delete_by_tag_while_booting_leaves_nothing(sandbox, image):
    body = {"region": "nyc3", "size": "s-1vcpu-1gb", "image": image["id"], "tags": ["nixforge-build-id:tag-test"]}
    made = [sandbox.call("POST", "/v2/droplets", {**body, "name": f"t-{i}"}, expect=202)["droplet"] for i in (1, 2)]
    before = netns_names()
    sandbox.call("DELETE", "/v2/droplets?tag_name=nixforge-build-id:tag-test", expect=204)
    for droplet in made:
        sandbox.call("GET", f"/v2/droplets/{droplet['id']}", expect=404)
    assert [r for r in sandbox.do_resources() if r["type"].startswith("do_droplet")] == []
    names = {f"droplet-{d['id']}" for d in made}
    inst = Instance(sandbox.instance)
    assert not names & set(qemu_names(inst)), "a QEMU of a deleted droplet runs"
    assert not [n for n in netns_names() - before if n.startswith(inst.name_prefix)]


def test_sandbox_down_stops_droplets_left_running(sandbox, tmp_path):
    """A second instance (the session's stays up): a droplet runs, `sandboxctl down` removes it."""
    raw = os.environ.get("NIXFORGE_SANDBOX_SCRATCH_INSTANCE")
    number = int(raw) if raw else (sandbox.instance + 100 if sandbox.instance < 100 else sandbox.instance - 100)
    inst = Instance(number)
    sandboxctl("up", instance=inst.number)
    try:
        other = DOSandbox(client.read_state(inst))
        root = tmp_path / "www"
        root.mkdir()
        (root / "d.qcow2.gz").write_bytes(gzip.compress(qcow2_image(GIB)))
        with FileServer(root) as files:
            body = {"name": "left", "url": files.url("d.qcow2.gz"), "region": "nyc3"}
            made = other.call("POST", "/v2/images", body, expect=202)["image"]
            while other.call("GET", f"/v2/images/{made['id']}", expect=200)["image"]["status"] == "NEW":
                time.sleep(0.1)
        body = {"name": "left", "region": "nyc3", "size": "s-1vcpu-1gb", "image": made["id"]}
        droplet = other.call("POST", "/v2/droplets", body, expect=202)["droplet"]
        wait_not_new(other, droplet["id"])
        [entry] = [r for r in other.do_resources() if r["type"] == "do_droplet"]
        qemu = (entry["processes"]["qemu"], procs.start_time(entry["processes"]["qemu"]))
        os.kill(client.read_state(inst)["pid"], signal.SIGKILL)  # nothing gets to clean up but `down`
    finally:
        proc = sandboxctl("down", instance=inst.number)
    assert "no process, namespace, mount or link left" in proc.stdout
    assert not procs.alive(*qemu)
    assert entry["netns"] not in netns_names()
