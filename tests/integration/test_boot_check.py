"""The boot check of do_image_publish (issue 16) when the image does not boot, in the sandbox:
the publish stage alone (playbooks/do_stage_publish.yml: B2 upload, DigitalOcean import, the
boot check) on an image made here on the controller that DigitalOcean imports but that can
never boot: a blank qcow2 (no partition table, no boot loader) inside gzip. No builder is
rented and nothing is built: what is under test starts at the import.

- the image does not boot: the stage fails naming the timeout, its variable and how far the
  droplet got; the droplet, its account key and the image are removed;
- Ctrl-C (SIGINT to ansible-playbook) while the droplet boots, then ``reap.yml`` by build id:
  nothing is left, and the check's private keys are gone with ansible-playbook.

Every case ends with nothing of its build in ``sandboxctl resources --json`` and no account
key of its build (the emulator lists keys only through its API).

Elsewhere: the passing check on the whole pipeline (the sandbox image really boots under QEMU,
SSH with the per-build key and the pinned host key, marker, boot time and cost in the summary,
droplet and key gone, only the image left) is asserted by
test_playbook_do.py::test_end_to_end_metal_vvvv_then_rerun, whose run has the boot check on (the
default). A real NixOS-like image whose init fails (``# nixforge-sandbox-break-init: true``)
is booted by test_sandbox_image.py::test_break_init_image_never_answers_ssh (the console
reaches the failure, SSH never answers); the plugin's ladder (address / TCP 22 / banner /
login) and its cleanups on timeout are unit-tested in tests/unit.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from _pipeline import (
    INVENTORY,
    ROOT,
    account_keys,
    kill_tree,
    new_id,
    playbook_env,
    resources_of,
    run_playbook,
    sandbox_env,
)
from _record import recording, records, result_of, results_of
from nfsandbox.testing import start_playbook

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.spread]

PUBLISH = ROOT / "playbooks" / "do_stage_publish.yml"
REAP = ROOT / "playbooks" / "reap.yml"
BOOT_TASK = "Boot a droplet from the image"
# The image never answers, however long the check waits: this only sets how long the test
# waits. boot_timeout counts from the droplet being active, so a slow create (the emulator
# starting QEMU on a loaded machine) cannot use it up; that wait is create_timeout's.
BROKEN_BOOT_TIMEOUT = 20
# The Ctrl-C case interrupts the check long before this; it only bounds a run that missed it.
INTERRUPTED_BOOT_TIMEOUT = 300


@pytest.fixture(scope="module")
def env(sandbox_instance: object) -> dict[str, str]:
    out = sandbox_env()
    assert out is not None and out.get("DIGITALOCEAN_TOKEN"), "the sandbox publishes no DigitalOcean token"
    return out


def unbootable_image(tmp_path: Path) -> dict[str, Any]:
    """A blank 1 GiB qcow2 inside gzip (a few KB) and the image.json the build stage would have
    written for it (playbooks/parts/record_image.yml: nixos_image_result with the controller's
    path). A valid import for DigitalOcean (the collection's preflight and the emulator inspect
    the format and the virtual size: 1 GiB, so the cheapest droplet size fits), but the disk has
    no boot sector: SeaBIOS finds nothing to boot and no SSH server ever runs."""
    out = tmp_path / "artifacts"
    out.mkdir()
    raw = out / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(raw), "1G"], check=True)
    image = out / "nixos.qcow2.gz"
    image.write_bytes(gzip.compress(raw.read_bytes(), mtime=0))
    raw.unlink()
    data = image.read_bytes()
    record = {
        "path": str(image),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "name": image.name,
        "build_seconds": 0.0,
        "fetch_seconds": 0.0,
        "builder": "none (made on the controller by the test)",
        "builder_path": "",
        "kind": "do",
        "flake": "",
        "attribute": "",
        "build_method": "",
        "fetch_method": "",
        "partitions": [],
    }
    (out / "image.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def variables(tmp_path: Path, build_id: str, boot_timeout: int) -> dict[str, Any]:
    return {
        "nixforge_build_id": build_id,
        "nixforge_output_dir": str(tmp_path / "artifacts"),
        "do_image_publish_boot_timeout": boot_timeout,
    }


def nothing_left(env: dict[str, str], build_id: str) -> None:
    assert resources_of(build_id) == []
    assert account_keys(env, build_id) == []


def reap(env: dict[str, str], tmp_path: Path, build_id: str) -> dict[str, Any]:
    record = tmp_path / "reap.jsonl"
    proc = run_playbook(REAP, recording(playbook_env(env), record), {"nixforge_build_id": build_id})
    assert proc.returncode == 0, proc.stdout[-6000:]
    return result_of(records(record), "Report what was removed per provider", "ok")["result"]["msg"]


def test_image_that_does_not_boot_fails_and_leaves_nothing(env: dict[str, str], tmp_path: Path) -> None:
    build_id = new_id("t-noboot")
    record = tmp_path / "run.jsonl"
    unbootable_image(tmp_path)
    try:
        proc = run_playbook(
            PUBLISH, recording(playbook_env(env), record), variables(tmp_path, build_id, BROKEN_BOOT_TIMEOUT)
        )
        assert proc.returncode != 0
        recorded = records(record)
        # it was imported (the check is what failed), with the bytes made here
        imported = result_of(recorded, "Import it into DigitalOcean", "ok")["result"]
        assert imported["image"]["status"] == "available", imported
        # the role registers the failed check (ignored), removes what it must, then stops with the reason
        boot = result_of(recorded, BOOT_TASK, "ignored")["result"]
        # QEMU's port forward accepts TCP on the droplet's address whatever the guest does, so a
        # droplet whose disk has no boot loader reaches "tcp", exactly as one whose init fails;
        # never a banner (no SSH server ever runs)
        assert boot["reached"] == "tcp", boot
        assert boot["droplet"]["size"] == "s-1vcpu-512mb-10gb" and boot["droplet"]["region"] == "nyc3"
        text = " ".join(proc.stdout.split())
        assert f"Build {build_id}: publishing failed." in text, text[-6000:]
        assert (
            "did not boot" in text
            and "within %d s of becoming active (option 'boot_timeout'; do_image_publish_boot_timeout"
            % BROKEN_BOOT_TIMEOUT
            in text
        ), text[-6000:]
        assert "the droplet got the address %s" % boot["droplet"]["public_ipv4"] in text
        assert "The image was deleted so that nobody launches it" in text
        assert [d["id"] for d in boot["removed"]["droplets"]] == [boot["droplet"]["id"]]
        assert [k["name"] for k in boot["removed"]["ssh_keys"]] == [boot["ssh_key"]["name"]]
        assert not results_of(recorded, "Publish the result")  # the stage did not go on
    finally:
        leftovers = resources_of(build_id)
        if leftovers:
            reap(env, tmp_path, build_id)
    assert leftovers == []
    nothing_left(env, build_id)


def test_ctrl_c_during_the_boot_check_then_reap_leaves_nothing(env: dict[str, str], tmp_path: Path) -> None:
    build_id = new_id("t-bootint")
    unbootable_image(tmp_path)
    started = time.time()
    record = tmp_path / "run.jsonl"
    extra = variables(tmp_path, build_id, INTERRUPTED_BOOT_TIMEOUT)
    args = ["-i", str(INVENTORY), str(PUBLISH), "-e", json.dumps(extra)]
    proc = start_playbook(
        args,
        recording(playbook_env(env), record),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # wait until the boot check's droplet exists (the upload and import come first)
        deadline = time.monotonic() + 600
        while not [r for r in resources_of(build_id) if r["type"] == "do_droplet"]:
            assert proc.poll() is None, f"the playbook ended before the boot check: {records(record)[-3:]}"
            assert time.monotonic() < deadline, "the boot check never started"
            time.sleep(0.5)
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C reaches ansible-playbook
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait()
    # the check's private keys lived in ansible-playbook's own temporary directory, gone with it
    local_tmp = Path(recording(playbook_env(env), record)["ANSIBLE_LOCAL_TEMP"])
    assert not list(local_tmp.glob("ansible-local-%d*/nixforge-boot-*" % proc.pid))
    stray = [p for p in Path(tempfile.gettempdir()).glob("nixforge-boot-*") if p.stat().st_mtime >= started]
    assert not stray, stray  # and never anywhere else
    # the pipeline did not go on after the boot check
    assert not [r for r in records(record) if r["task"] == "nixforge.images.do_image_publish : Publish the result"]
    assert not [r for r in records(record) if r["task"].startswith("Summary")]
    report = reap(env, tmp_path, build_id)
    assert report["mode"] == "removed"
    nothing_left(env, build_id)
