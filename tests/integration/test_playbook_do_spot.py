"""playbooks/build-do-image.yml when EC2 interrupts its spot builder mid-build (issue 17's
spot retry, which the DigitalOcean pipeline shares with the SD one through
playbooks/parts/build.yml and parts/spot_retry.yml): the build watcher reads the two-minute
notice from the builder's instance metadata, that builder is torn down, the build runs once
more with the same build id on a fresh builder of another candidate type, and the image is
published; the summary names both builders. Real SSH, real Nix, the sandbox's EC2, B2 and
DigitalOcean; the same fault knob as test_playbook_sd.py's spot test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _pipeline import (
    ROOT,
    SpotRun,
    new_id,
    playbook_env,
    resources_of,
    run_with_spot_notice,
    sandbox_env,
    set_faults,
    slow_module,
)
from _record import failures, recording, records, result_of, results_of
from test_playbook_do import delete_images, do_images

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

PLAYBOOK = ROOT / "playbooks" / "build-do-image.yml"


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


def test_do_pipeline_retries_after_a_spot_interruption(env: dict[str, str], tmp_path: Path) -> None:
    build_id = new_id("t-dointr")
    variables = {
        "nixforge_build_id": build_id,
        "nixforge_output_dir": str(tmp_path / "artifacts"),
        "builder_host_state_dir": str(tmp_path / "state"),
        # long enough that the notice (2 s after the build starts) arrives while Nix builds;
        # the retried build runs the module without the switch (no second wait)
        "nixos_image_module": str(module := slow_module(tmp_path, 60)),
        "builder_host_ec2_market": "spot",
        "do_image_publish_boot_check": False,
    }
    run_env = recording(playbook_env(env), tmp_path / "record.jsonl")
    # count 1: the fresh builder is not interrupted again
    notice = {"build_id": build_id, "after_seconds": 2, "notice_seconds": 3600, "count": 1}
    run = run_with_spot_notice(PLAYBOOK, run_env, variables, notice, fast_retry=module)
    try:
        check(build_id, run, tmp_path)
    finally:
        delete_images(env, build_id)  # the product, as a user removes it when done


def check(build_id: str, run: SpotRun, tmp_path: Path) -> None:
    output, served = run.output, run.served
    assert run.armed, output[-6000:]
    assert run.returncode == 0, output[-8000:]
    runs = records(tmp_path / "record.jsonl")
    launched = [r["result"] for r in results_of(runs, "Launch or adopt the build's EC2 instance", "ok")]
    assert len(launched) == 2, launched
    first, second = launched
    assert served["served"]["spot_interruption_notice"] == {first["instance_id"]: 1}, served
    interrupted = [r for r in failures(runs) if r["result"].get("interrupted")]
    assert len(interrupted) == 1 and "interrupted by EC2 (spot)" in interrupted[0]["result"]["msg"], failures(runs)
    # a fresh builder of another candidate type, for the same build
    assert second["instance_id"] != first["instance_id"]
    assert second["instance_type"] != first["instance_type"]
    assert second["build"]["build_id"] == build_id
    teardowns = [r["result"] for r in results_of(runs, "Remove every EC2 resource of the build", "ok")]
    assert [t["removed"]["instances"] for t in teardowns[:2]] == [[first["instance_id"]], [second["instance_id"]]]
    # published once, from the retried build; the summary names both builders and counts both
    summary = {
        key: value.strip()
        for key, _sep, value in (
            " ".join(line.split()).partition(": ") for line in result_of(runs, "Summary", "ok")["result"]["msg"]
        )
    }
    assert summary["Builder"].startswith(second["instance_type"] + " (ec2, spot"), summary
    assert summary["Interrupted"].startswith(first["instance_type"] + " (ec2, spot"), summary
    assert "interrupted by EC2 (spot)" in summary["Interrupted"]
    assert summary["Image id"].split()[0].isdigit(), summary
    # one upload, from the retried builder straight to B2 (the interrupted one never got there)
    assert len(results_of(runs, "Upload the image from the builder straight to B2 (the B2 key", "ok")) == 1
    # nothing but the image is left
    assert len(do_images(build_id)) == 1
    assert [r for r in resources_of(build_id) if r["provider"] != "digitalocean"] == []
