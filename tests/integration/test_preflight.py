"""Fail before renting: every input of the pipelines that the controller alone can judge is
checked before anything is created (issue 17). For each bad input, the playbook fails with
the variable named, having made no EC2 request at all (every request the sandbox's EC2
serves is counted through its `delay` knob), having run no task of builder_host (no builder
was rented, so no seconds of one were paid), with nothing of the build in
`sandboxctl resources --json`.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _pipeline import INVENTORY, ROOT, control, new_id, playbook_env, resources_of, sandbox_env, set_faults
from _record import failures, recording, records
from nfsandbox.testing import ansible_playbook

pytestmark = [pytest.mark.sandbox, pytest.mark.spread]

SD = ROOT / "playbooks" / "build-sd-aarch64.yml"
DO = ROOT / "playbooks" / "build-do-image.yml"
# Every EC2 request answers after this delay and is counted in the served counters.
COUNT_EVERY_REQUEST = {"delay": {"seconds": 0.001}}


@pytest.fixture(scope="module")
def env(sandbox_instance: object) -> dict[str, str]:
    out = sandbox_env()
    assert out is not None
    return out


def bad_inputs(tmp: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """case -> (extra variables, the variable the message must name)."""
    (tmp / "noflake").mkdir(parents=True, exist_ok=True)
    (tmp / "locked.nix").write_text("{ ... }: { }\n")
    (tmp / "locked.nix").chmod(0)
    (tmp / "a-file").write_text("")
    return {
        "flake-missing": ({"nixos_image_flake": str(tmp / "no-such-flake")}, "nixos_image_flake"),
        "flake-without-flake-nix": ({"nixos_image_flake": str(tmp / "noflake")}, "nixos_image_flake"),
        "unknown-shipped-name": ({"nixos_image_flake": "nixforge:sandbx"}, "nixos_image_flake"),
        "module-missing": (
            {"nixos_image_flake": "nixforge:sandbox", "nixos_image_module": str(tmp / "no-such-module.nix")},
            "nixos_image_module",
        ),
        "module-unreadable": (
            {"nixos_image_flake": "nixforge:sandbox", "nixos_image_module": str(tmp / "locked.nix")},
            "nixos_image_module",
        ),
        "module-with-remote-flake": (
            {"nixos_image_flake": "github:nixforge/nope", "nixos_image_module": str(tmp / "locked.nix")},
            "nixos_image_module",
        ),
        "timeout-not-a-number": ({"nixos_image_build_timeout": "two hours"}, "nixos_image_build_timeout"),
        "no-fetch-streams": ({"nixos_image_fetch_streams": 0}, "nixos_image_fetch_streams"),
        "output-dir-under-a-file": ({"nixforge_output_dir": str(tmp / "a-file" / "out")}, "nixos_image_dest_dir"),
        "bootstrap-method": ({"nix_bootstrap_build_method": "podman"}, "nix_bootstrap_build_method"),
        "build-mode": ({"nixforge_build_mode": "local"}, "nixforge_build_mode"),
    }


CASE_NAMES = [
    "flake-missing",
    "flake-without-flake-nix",
    "unknown-shipped-name",
    "module-missing",
    "module-unreadable",
    "module-with-remote-flake",
    "timeout-not-a-number",
    "no-fetch-streams",
    "output-dir-under-a-file",
    "bootstrap-method",
    "build-mode",
]


# root without the capabilities that let it read any file
NO_READ_ANY_FILE = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")


def run(env: dict[str, str], tmp_path: Path, playbook: Path, variables: dict[str, Any]) -> subprocess.CompletedProcess:
    """ansible-playbook as root without the capabilities that let root read any file, so a
    file its owner may not read is unreadable here too, as for any other user."""
    args = ["-i", str(INVENTORY), str(playbook), "-e", json.dumps(variables)]
    run_env = recording(playbook_env(env), tmp_path / "record.jsonl")
    return ansible_playbook(args, run_env, timeout=600, prefix=NO_READ_ANY_FILE)


def ec2_requests(env: dict[str, str]) -> dict[str, int]:
    return control(env, "GET", "/faults/ec2")["faults"]["served"].get("delay", {})


# The DigitalOcean pipeline runs the same preflight: three cases show it there.
PARAMS = [("sd", c) for c in CASE_NAMES] + [
    ("do", c) for c in ("flake-missing", "module-unreadable", "output-dir-under-a-file")
]


@pytest.mark.parametrize(("pipeline", "case"), PARAMS, ids=["%s-%s" % p for p in PARAMS])
def test_bad_input_fails_before_anything_is_created(
    env: dict[str, str], tmp_path: Path, pipeline: str, case: str
) -> None:
    extra, named = bad_inputs(tmp_path / "inputs")[case]
    build_id = new_id("t-pre")
    variables = {"nixforge_build_id": build_id, "builder_host_state_dir": str(tmp_path / "state")}
    variables.setdefault("nixforge_output_dir", str(tmp_path / "artifacts"))
    variables.update(extra)
    set_faults(env, "ec2", COUNT_EVERY_REQUEST)
    try:
        proc = run(env, tmp_path, SD if pipeline == "sd" else DO, variables)
        requests = ec2_requests(env)
    finally:
        set_faults(env, "ec2", {})
    assert proc.returncode != 0, proc.stdout[-4000:]
    recorded = records(tmp_path / "record.jsonl")
    failed = failures(recorded)
    assert failed, proc.stdout[-4000:]
    message = " ".join(str(failed[-1]["result"].get("msg", "")).split())
    assert re.search(r"(?<![\w.])%s(?!\w)" % re.escape(named), message), message
    assert failed[-1]["task"].endswith("Check the build's inputs on the controller"), failed[-1]["task"]
    assert message.startswith("Nothing was created: "), message
    # nothing was asked of EC2, no builder_host task ran (nothing rented), nothing is left
    assert requests == {}, requests
    assert not [r["task"] for r in recorded if r["task"].startswith("nixforge.images.builder_host")]
    assert resources_of(build_id) == []
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


def test_good_input_passes_the_preflight_and_reaches_the_provider(env: dict[str, str], tmp_path: Path) -> None:
    """The counterpart: the same run with good input gets past the preflight to EC2 (here
    stopped by a spot capacity fault, so nothing is built): the counters do see requests."""
    build_id = new_id("t-pre-ok")
    variables = {
        "nixforge_build_id": build_id,
        "builder_host_state_dir": str(tmp_path / "state"),
        "nixforge_output_dir": str(tmp_path / "artifacts"),
        "nixos_image_flake": "nixforge:sandbox",
    }
    set_faults(env, "ec2", {**COUNT_EVERY_REQUEST, "capacity": [{"market": "spot"}]})
    try:
        proc = run(env, tmp_path, SD, variables)
        requests = ec2_requests(env)
    finally:
        set_faults(env, "ec2", {})
    assert proc.returncode != 0
    recorded = records(tmp_path / "record.jsonl")
    preflight = [r for r in recorded if r["task"].endswith("Check the build's inputs on the controller")]
    assert [r["status"] for r in preflight] == ["ok"], preflight
    assert requests, "the provider was never asked: the counters would prove nothing"
    message = " ".join(str(failures(recorded)[-1]["result"].get("msg", "")).split())
    assert "provisioning the builder failed" in message and "InsufficientInstanceCapacity" in message, message
    assert resources_of(build_id) == []
