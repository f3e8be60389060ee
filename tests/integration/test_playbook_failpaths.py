"""Failure paths of the playbooks, end to end in the sandbox (real SSH, real Nix), asserted
on the tasks' structured results (a recording callback), not on stdout:

- a Metal spot device reclaimed by the provider during the Nix build;
- an artifact whose bytes change on the way to the controller, or in its partial file;
- a fetch killed part way, resumed without sending the fetched bytes again.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _pipeline import (
    INVENTORY,
    ROOT,
    control,
    new_id,
    playbook_env,
    resources_of,
    set_faults,
    slow_module,
)
from _record import recording, records, result_of
from nfsandbox.testing import start_playbook

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.spread]

DO_PLAYBOOK = ROOT / "playbooks" / "build-do-image.yml"
SD_PLAYBOOK = ROOT / "playbooks" / "build-sd-aarch64.yml"
BUILD_TASK = "TASK [nixforge.images.nixos_image : Build "


@pytest.fixture(autouse=True)
def no_faults(env: dict[str, str]) -> Any:
    for provider in ("ec2", "metal"):
        set_faults(env, provider, {})
    yield
    for provider in ("ec2", "metal"):
        set_faults(env, provider, {})


def play_and_act_at(args: list[str], run_env: dict[str, str], marker: str, act: Any) -> tuple[int, str]:
    """Run ansible-playbook with `args`; call act() once when a stdout line starts with marker."""
    proc = start_playbook(args, run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    acted = False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not acted and line.startswith(marker):
                act()
                acted = True
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines)
    assert acted, output[-6000:]
    return proc.returncode, output


def test_metal_device_reclaimed_mid_build_tears_down_and_says_so(env: dict[str, str], tmp_path: Path) -> None:
    """The spot market reclaims the Metal device while Nix builds: the play tears down,
    teardown reports the device the provider ended, the play fails naming the reclaim,
    no image is reported and nothing of the build is left."""
    build_id = new_id("t-reclaim")
    record = tmp_path / "record.jsonl"
    variables = {
        "nixforge_build_id": build_id,
        "nixforge_output_dir": str(tmp_path / "artifacts"),
        "builder_host_state_dir": str(tmp_path / "state"),
        "builder_host_provider": "metal",
        "builder_host_metal_spot_instance": True,
        "nixos_image_module": str(slow_module(tmp_path, 120)),
    }
    args = ["-i", str(INVENTORY), str(DO_PLAYBOOK), "-e", json.dumps(variables)]

    def reclaim() -> None:
        set_faults(env, "metal", {"reclaim": build_id, "reclaim_after": 2})

    code, output = play_and_act_at(args, recording(playbook_env(env), record), BUILD_TASK, reclaim)
    assert code != 0, output[-6000:]
    recorded = records(record)
    device_id = result_of(recorded, "Create or adopt the build's Metal device", "ok")["result"]["device"]["id"]
    assert control(env, "GET", "/faults/metal")["faults"]["served"] == {"reclaim": 1}
    teardown = result_of(recorded, "Remove the build's Metal device", "ok")["result"]
    assert [(e["device_id"], e["code"]) for e in teardown["ended"]] == [(device_id, "termination.spot_market")]
    assert "spot market" in teardown["ended"][0]["message"]
    failure = result_of(recorded, "Summary (or stop with the build's error)", "failed")["result"]["msg"]
    assert f"Build {build_id} failed" in failure
    assert f"The provider ended the builder: termination.spot_market on {device_id}." in failure, failure
    # registered as builder_host_teardown_result
    teardown = result_of(recorded, "Publish the teardown result", "ok")["result"]
    assert teardown["ended"] == [f"termination.spot_market on {device_id}"], teardown
    # no image was reported and none is on the controller
    assert not [r for r in recorded if r["task"].startswith("Summary") and r["status"] == "ok"]
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())
    assert resources_of(build_id) == []


def builder_ssh(state: Path) -> list[str]:
    """ssh to the build's builder as admin, with the build's key and pinned host key."""
    address = (state / "known_hosts").read_text().split()[0]
    ssh = ["ssh", "-F", "/dev/null", "-i", str(state / "id_ed25519"), "-o", "IdentitiesOnly=yes"]
    ssh += ["-o", f"UserKnownHostsFile={state / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes"]
    return [*ssh, f"admin@{address}"]


def test_build_killed_on_the_builder_fails_at_once_and_tears_down(env: dict[str, str], tmp_path: Path) -> None:
    """The build process dies on the builder without writing its exit status (the OOM
    killer, a reboot): the role says so at its next look, and everything is torn down.
    The build would last 10 minutes and never writes its status once killed: a role that
    followed it would run into pytest's timeout, so the test needs no clock of its own."""
    build_id = new_id("t-vanish")
    state = tmp_path / "state"
    record = tmp_path / "record.jsonl"
    variables = {
        "nixforge_build_id": build_id,
        "nixforge_output_dir": str(tmp_path / "artifacts"),
        "builder_host_state_dir": str(state),
        "nixos_image_module": str(slow_module(tmp_path, 600)),
    }
    args = ["-i", str(INVENTORY), str(SD_PLAYBOOK), "-e", json.dumps(variables)]

    def kill_the_build() -> None:
        ssh = builder_ssh(state)
        script = (
            "pid=/var/tmp/nixforge-image/build.pid; for i in $(seq 100); do [ -s $pid ] && break; sleep 0.2; done;"
            " sudo -n kill -9 $(cat $pid)"
        )
        subprocess.run([*ssh, script], check=True, timeout=60, capture_output=True)

    code, output = play_and_act_at(args, recording(playbook_env(env), record), BUILD_TASK, kill_the_build)
    assert code != 0, output[-6000:]
    failed = [r for r in records(record) if r["status"] == "failed"]
    assert any("ended without an exit status" in json.dumps(r["result"]) for r in failed), failed
    assert resources_of(build_id) == []


def test_nix_killed_by_sigkill_is_reported_as_killed_not_as_a_timeout(env: dict[str, str], tmp_path: Path) -> None:
    """The Nix process itself (not build.sh) gets SIGKILL mid-build, as from the OOM killer:
    build.sh records exit 137 well before nixos_image_build_timeout, and the role reports a
    kill by SIGKILL with what the builder's kernel log says (an out-of-memory line, none, or
    why it cannot be read), never a timeout; everything is torn down."""
    build_id = new_id("t-sigkill")
    state = tmp_path / "state"
    record = tmp_path / "record.jsonl"
    variables = {
        "nixforge_build_id": build_id,
        "nixforge_output_dir": str(tmp_path / "artifacts"),
        "builder_host_state_dir": str(state),
        "nixos_image_module": str(slow_module(tmp_path, 300)),
    }
    args = ["-i", str(INVENTORY), str(SD_PLAYBOOK), "-e", json.dumps(variables)]

    def kill_nix() -> None:
        ssh = builder_ssh(state)
        # the `nix` process (its name exactly: not build.sh, timeout or nix-daemon), once it runs;
        # /proc, as a minimal Debian may lack procps
        script = (
            'nix() { for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = nix ] && echo ${p#/proc/}; done; };'
            ' until [ -n "$(nix)" ]; do sleep 0.2; done; sudo -n kill -KILL $(nix)'
        )
        subprocess.run([*ssh, script], check=True, timeout=300, capture_output=True)

    code, output = play_and_act_at(args, recording(playbook_env(env), record), BUILD_TASK, kill_nix)
    assert code != 0, output[-6000:]
    failed = [r for r in records(record) if r["status"] == "failed" and r["result"].get("exit_code") is not None]
    assert [r["result"]["exit_code"] for r in failed] == [137], failed
    message = failed[0]["result"]["msg"]
    assert "it was killed by SIGKILL (exit 137) after " in message, message
    assert "longer than" not in message, message
    assert re.search(r"Kernel log: (\(no out-of-memory line|\(the kernel log is not readable|\S)", message), message
    assert resources_of(build_id) == []
