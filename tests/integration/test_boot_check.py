"""The boot check of do_image_publish (issue 16) in the sandbox, through the whole DigitalOcean
pipeline: the sandbox image really boots under QEMU in the DigitalOcean emulator, the
controller logs in with the per-build key and the pinned host key and runs the check.

- a boot check that passes: the summary shows the boot time, the image's marker and the cost;
  the droplet and its account key are gone, the image stays (the product);
- an image that does not boot (its init is broken by the module line
  ``# nixforge-sandbox-break-init: true``): the pipeline fails naming the timeout and how far
  the droplet got, and the droplet, the key and the image are removed;
- Ctrl-C (SIGINT to ansible-playbook) while the droplet boots, then ``reap.yml`` by build id:
  nothing is left.

Every case ends with nothing of its build in ``sandboxctl resources --json`` and no account
key of its build (the emulator lists keys only through its API).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from _pipeline import INVENTORY, ROOT, kill_tree, new_id, playbook_env, resources_of, run_playbook, sandbox_env
from _record import recording, records, result_of
from nfsandbox.testing import start_playbook

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.spread]

PLAYBOOK = ROOT / "playbooks" / "build-do-image.yml"
REAP = ROOT / "playbooks" / "reap.yml"
BOOT_TASK = "Boot a droplet from the image"
# Long enough for a TCG boot on a loaded machine; a passing check ends as soon as SSH answers,
# a broken image fails only once it is over (nothing ever answers), so it is not a guess at speed.
BOOT_TIMEOUT = 420
# The broken image never answers, however long the check waits: this only sets how long the
# test waits. boot_timeout counts from the droplet being active, so a slow create (the
# emulator starting QEMU on a loaded machine) cannot use it up; that wait is create_timeout's.
BROKEN_BOOT_TIMEOUT = 20


@pytest.fixture(scope="module")
def env(sandbox_instance: object) -> dict[str, str]:
    out = sandbox_env()
    assert out is not None and out.get("DIGITALOCEAN_TOKEN"), "the sandbox publishes no DigitalOcean token"
    return out


def variables(tmp_path: Path, build_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "nixforge_build_id": build_id,
        "nixforge_output_dir": str(tmp_path / "artifacts"),
        "builder_host_state_dir": str(tmp_path / "state"),
        "do_image_publish_boot_timeout": BOOT_TIMEOUT,
        # a Metal builder (Debian 12), as test_playbook_do's main case; the EC2 default (Debian 13) builds the
        # same image since wip/image handles that kernel's built-in virtio drivers
        "builder_host_provider": "metal",
        **extra,
    }


def account_keys(env: dict[str, str], build_id: str) -> list[str]:
    """Names of the account SSH keys of the build, straight from the emulator's API."""
    answer = requests.get(
        env["DIGITALOCEAN_API_URL"].rstrip("/") + "/account/keys",
        params={"per_page": 200},
        headers={"Authorization": "Bearer " + env["DIGITALOCEAN_TOKEN"]},
        verify=env.get("DIGITALOCEAN_CA_BUNDLE") or env.get("REQUESTS_CA_BUNDLE") or True,
        timeout=30,
    )
    answer.raise_for_status()
    return [k["name"] for k in answer.json()["ssh_keys"] if k["name"].startswith("nixforge-%s-" % build_id)]


def nothing_left(env: dict[str, str], build_id: str) -> None:
    assert resources_of(build_id) == []
    assert account_keys(env, build_id) == []


def reap(env: dict[str, str], tmp_path: Path, build_id: str) -> dict[str, Any]:
    record = tmp_path / "reap.jsonl"
    proc = run_playbook(REAP, recording(playbook_env(env), record), {"nixforge_build_id": build_id})
    assert proc.returncode == 0, proc.stdout[-6000:]
    return result_of(records(record), "Report what was removed per provider", "ok")["result"]["msg"]


def broken_module(tmp_path: Path) -> Path:
    module = tmp_path / "broken" / "default.nix"
    module.parent.mkdir()
    module.write_text("{ ... }: { }\n# nixforge-sandbox-break-init: true\n")
    return module.parent


def test_boot_check_passes_and_shows_in_the_summary(env: dict[str, str], tmp_path: Path) -> None:
    build_id = new_id("t-boot")
    record = tmp_path / "run.jsonl"
    try:
        proc = run_playbook(PLAYBOOK, recording(playbook_env(env), record), variables(tmp_path, build_id))
        assert proc.returncode == 0, proc.stdout[-12000:] + proc.stderr[-3000:]
        boot = result_of(records(record), BOOT_TASK, "ok")["result"]
        assert boot["reached"] == "login" and 0 < boot["boot_seconds"] <= BOOT_TIMEOUT
        assert boot["output"].splitlines()[0] == "nixforge sandbox image (do)"  # the built image's marker
        assert boot["cost"] == 0.01 and boot["billed_seconds"] >= 60 and boot["price_per_hour"] > 0
        assert boot["droplet"]["size"] == "s-1vcpu-512mb-10gb"  # the cheapest that holds the image
        assert [d["id"] for d in boot["removed"]["droplets"]] == [boot["droplet"]["id"]]
        assert [k["name"] for k in boot["removed"]["ssh_keys"]] == [boot["ssh_key"]["name"]]
        assert boot["ssh_key"]["name"].startswith("nixforge-%s-" % build_id)
        text = " ".join(proc.stdout.split())
        # boot_seconds counts from the droplet being active; create to SSH is both together
        assert boot["create_seconds"] is not None and boot["create_seconds"] >= 0
        total, booted = round(boot["boot_seconds"] + boot["create_seconds"], 1), round(boot["boot_seconds"], 1)
        line = "Boot check: %s s from create to SSH (booted in %s s once active) on s-1vcpu-512mb-10gb in nyc3"
        assert line % (total, booted) in text, text[-3000:]
        assert "cost 0.0100 USD" in text and "Boot out: nixforge sandbox image (do)" in text
        assert "PRIVATE KEY-----" not in proc.stdout + proc.stderr
        assert env["DIGITALOCEAN_TOKEN"] not in proc.stdout + proc.stderr
        left = resources_of(build_id)
        assert [r["type"] for r in left] == ["do_image"], left  # only the product
        assert account_keys(env, build_id) == []
    finally:
        reap(env, tmp_path, build_id)  # named: removes the product image too
    nothing_left(env, build_id)


def test_image_that_does_not_boot_fails_and_leaves_nothing(env: dict[str, str], tmp_path: Path) -> None:
    build_id = new_id("t-noboot")
    record = tmp_path / "run.jsonl"
    extra = {"nixos_image_module": str(broken_module(tmp_path)), "do_image_publish_boot_timeout": BROKEN_BOOT_TIMEOUT}
    proc = run_playbook(PLAYBOOK, recording(playbook_env(env), record), variables(tmp_path, build_id, **extra))
    assert proc.returncode != 0
    # the role registers the failed check (ignored), removes what it must, then stops with the reason
    boot = result_of(records(record), BOOT_TASK, "ignored")["result"]
    assert boot["reached"] in ("address", "tcp"), boot  # an address, maybe QEMU's port forward, never a banner
    text = " ".join(proc.stdout.split())
    assert f"Build {build_id} failed" in text, text[-6000:]
    assert (
        "did not boot" in text
        and "within %d s of becoming active (option 'boot_timeout'; do_image_publish_boot_timeout" % BROKEN_BOOT_TIMEOUT
        in text
    )
    assert "the droplet got the address %s" % boot["droplet"]["public_ipv4"] in text
    assert "The image was deleted so that nobody launches it" in text
    assert [d["id"] for d in boot["removed"]["droplets"]] == [boot["droplet"]["id"]]
    nothing_left(env, build_id)


def test_ctrl_c_during_the_boot_check_then_reap_leaves_nothing(env: dict[str, str], tmp_path: Path) -> None:
    build_id = new_id("t-bootint")
    started = time.time()
    record = tmp_path / "run.jsonl"
    args = ["-i", str(INVENTORY), str(PLAYBOOK), "-e", json.dumps(variables(tmp_path, build_id))]
    proc = start_playbook(
        args,
        recording(playbook_env(env), record),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # wait until the boot check's droplet exists (the build and import come first)
        deadline = time.monotonic() + 780
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
