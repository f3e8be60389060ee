"""playbooks/build-do-image.yml on its default EC2 builder: a nested-virtualization type
(issue 19), and that builder's spot interruption notice mid-build (issue 17).

1. The default run launches a C8i/M8i builder with EC2's nested virtualization CPU option
   (the launch records it), says so in the summary, and prices the build: billed seconds
   with EC2's 60-second minimum, and the difference to a bare-metal builder at catalogue
   prices.
2. EC2 gives that spot builder its two-minute notice while Nix builds: the build watcher
   (nix_build's spot_notice) reads spot/instance-action from the builder's metadata,
   reports "interrupted by EC2 (spot)", and the play tears the builder down itself (the
   notice outlasts the test: EC2 never reclaims it) and fails saying so; nothing is left.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _pipeline import (
    BIN,
    INVENTORY,
    ROOT,
    new_id,
    playbook_env,
    resources,
    resources_of,
    run_playbook,
    run_with_spot_notice,
    sandbox_env,
    set_faults,
    slow_module,
)
from _record import failures, recording, records, results_of

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

PLAYBOOK = ROOT / "playbooks" / "build-do-image.yml"
LAUNCH = "Launch or adopt the build's EC2 instance"


@pytest.fixture(scope="module")
def env(sandbox_instance: object) -> dict[str, str]:
    out = sandbox_env()
    assert out is not None
    return out


@pytest.fixture(autouse=True)
def _no_faults(env: dict[str, str]) -> Iterator[None]:
    set_faults(env, "ec2", {})
    yield
    set_faults(env, "ec2", {})


def variables(tmp_path: Path, build_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "nixforge_build_id": build_id,
        "nixforge_output_dir": str(tmp_path / "artifacts"),
        "builder_host_state_dir": str(tmp_path / "state"),
        "do_image_publish_boot_check": False,
        **extra,
    }


def summary_lines(recorded: list[dict[str, Any]]) -> dict[str, str]:
    [result] = [r["result"] for r in results_of(recorded, "Summary", "ok") if isinstance(r["result"].get("msg"), list)]
    out = {}
    for line in result["msg"]:
        key, _sep, value = " ".join(line.split()).partition(": ")
        out[key] = value.strip()
    return out


def delete_images(env: dict[str, str], build_id: str) -> None:
    proc = subprocess.run(
        [
            *(str(BIN / "ansible"), "localhost", "-i", str(INVENTORY)),
            *("-m", "nixforge.images.do_custom_image", "-a", f"state=absent build_id={build_id}"),
        ],
        capture_output=True,
        text=True,
        env=playbook_env(env),
        cwd=str(ROOT),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_default_builder_is_a_nested_virtualization_type_and_the_summary_prices_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    build_id = new_id("t-donv")
    record = tmp_path / "record.jsonl"
    try:
        proc = run_playbook(PLAYBOOK, recording(playbook_env(env), record), variables(tmp_path, build_id))
        assert proc.returncode == 0, proc.stdout[-6000:]
        recorded = records(record)
        [launch] = [r["result"] for r in results_of(recorded, LAUNCH, "ok")]
        assert launch["instance_type"] in ("c8i.2xlarge", "c8i-flex.2xlarge", "m8i.2xlarge"), launch["instance_type"]
        assert launch["nested_virtualization"] is True and launch["kvm"] is True
        assert sorted(launch["launch_template_ids"]) == ["nested", "plain"]  # *.metal stay later candidates
        lines = summary_lines(recorded)
        assert lines["Builder"].startswith(launch["instance_type"] + " (ec2, "), lines
        assert lines["Builder"].endswith("KVM: nested virtualization"), lines
        assert "s billed, EC2 bills per second, 60 s minimum" in lines["Cost (est)"], lines
        billed = int(lines["Cost (est)"].split("(builder ", 1)[1].split(" s billed", 1)[0])
        assert billed >= 60, lines
        price = lines["KVM price"]
        assert price.startswith(launch["instance_type"] + " (nested virtualization)"), price
        assert "c5.metal (bare metal)" in price and "less per build" in price and "2026-12" in price, price
    finally:
        delete_images(env, build_id)
    assert resources_of(build_id) == []


def test_spot_notice_mid_build_is_reported_and_the_builder_torn_down(env: dict[str, str], tmp_path: Path) -> None:
    build_id = new_id("t-donotice")
    # the retry after an interruption has its own test (test_playbook_do_spot.py): here the notice ends the build
    extra = variables(tmp_path, build_id, nixos_image_module=str(slow_module(tmp_path, 90)), nixforge_spot_retry=False)
    record = tmp_path / "record.jsonl"
    # a notice that outlasts the test: only the teardown can end the builder
    notice = {"build_id": build_id, "after_seconds": 1, "notice_seconds": 3600, "count": 1}
    run = run_with_spot_notice(PLAYBOOK, recording(playbook_env(env), record), extra, notice)
    faults = run.served
    assert run.armed and run.returncode != 0, run.output[-6000:]
    recorded = records(record)
    [launch] = [r["result"] for r in results_of(recorded, LAUNCH, "ok")]
    assert launch["lifecycle"] == "spot" and launch["nested_virtualization"] is True
    instance_id = launch["instance_id"]
    assert faults["served"]["spot_interruption_notice"] == {instance_id: 1}, faults
    assert "spot_interruption" not in faults["served"], faults  # EC2 never reclaimed it: the teardown did
    interrupted = [r["result"] for r in failures(recorded) if r["result"].get("interrupted")]
    assert len(interrupted) == 1, failures(recorded)
    assert json.loads(interrupted[0]["interrupted"]["notice"])["action"] == "terminate"
    assert "interrupted by EC2 (spot)" in interrupted[0]["msg"]
    [teardown] = [r["result"] for r in results_of(recorded, "Remove every EC2 resource of the build", "ok")]
    assert teardown["removed"]["instances"] == [instance_id], teardown
    message = " ".join(str(failures(recorded)[-1]["result"].get("msg", "")).split())
    assert message.startswith(f"Build {build_id} failed; the builder and everything the build created were removed")
    assert "interrupted by EC2 (spot)" in message, message
    # no image came out (the failed build's log is kept for the user, as for any failed build)
    assert list(tmp_path.glob("artifacts/*.qcow2*")) == [], list(tmp_path.glob("artifacts/*"))
    assert [r for r in resources() if build_id in json.dumps(r)] == []
