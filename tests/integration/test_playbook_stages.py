"""The DigitalOcean pipeline as four separate `ansible-playbook` processes (the stage
playbooks, as an AWX workflow runs them), against the sandbox: provision, build (which
fails once and is retried on the same builder, nothing provisioned again), teardown,
publish. The build stage finds the builder only through the `builders` inventory plugin
(an inventory source of the plugin, filtered to the build id, no cache: what an AWX
inventory source does); nothing is passed between the processes but files the stages
write (the per-build state directory, image.json) and the provider's tags.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from _pipeline import BIN, INVENTORY, ROOT, playbook_env, resources, resources_of
from nfsandbox.testing import ansible_playbook

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.spread]

PLAYBOOKS = ROOT / "playbooks"
BUILDERS_SOURCE = ROOT / "inventories" / "sandbox-builders" / "nixforge.builders.yml"


class Stages:
    """One build's stage runs: the sandbox inventory (endpoints) plus a builders source."""

    def __init__(self, env: dict[str, str], tmp: Path, build_id: str, pipeline: str = "do") -> None:
        self.build_id = build_id
        self.pipeline = pipeline
        self.tmp = tmp
        state_root = tmp / "state"
        source = yaml.safe_load(BUILDERS_SOURCE.read_text())
        for key in [k for k in source if k.startswith("cache")]:
            del source[key]
        source["build_ids"] = [build_id]
        (tmp / "inv").mkdir()
        (tmp / "inv" / "nixforge.builders.yml").write_text(yaml.safe_dump(source))
        self.env = playbook_env(
            env,
            ANSIBLE_HOME=str(tmp / "ansible-home"),
            NIXFORGE_STATE_DIRS=str(state_root),
            ANSIBLE_HOST_KEY_CHECKING="true",
        )
        self.variables = {
            "nixforge_build_id": build_id,
            "builder_host_state_dir": str(state_root / build_id),
            "nixforge_output_dir": str(tmp / "artifacts"),
        }

    def run(self, stage: str, **extra: Any) -> subprocess.CompletedProcess:
        args = ["-i", str(INVENTORY), "-i", str(self.tmp / "inv")]
        args += [str(PLAYBOOKS / f"{self.pipeline}_stage_{stage}.yml"), "-e", json.dumps({**self.variables, **extra})]
        return ansible_playbook(args, self.env, timeout=1200)


def instances(build_id: str) -> list[str]:
    return [r["id"] for r in resources_of(build_id) if r["provider"] == "ec2" and r["type"] == "instance"]


def flat(proc: subprocess.CompletedProcess) -> str:
    return " ".join(proc.stdout.split())


def test_do_pipeline_stage_by_stage_with_a_retried_build(env: dict[str, str], tmp_path: Path) -> None:
    build_id = f"t-stg-{secrets.token_hex(3)}"
    stages = Stages(env, tmp_path, build_id)
    try:
        early = stages.run("build")
        assert early.returncode != 0
        assert f"the inventory has no builder nixforge-builder-{build_id}" in flat(early), early.stdout[-3000:]

        proc = stages.run("provision")
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        first = instances(build_id)
        assert len(first) == 1, resources_of(build_id)

        # a build that fails (a wrong image definition) leaves the builder for a retry
        failed = stages.run("build", nixos_image_flake=str(tmp_path / "no-such-flake"))
        assert failed.returncode != 0
        assert "no flake.nix" in flat(failed) and "left for a retry" in flat(failed), failed.stdout[-4000:]
        assert f"nixforge-builder-{build_id}" in failed.stdout  # it reached the builder
        assert instances(build_id) == first

        built = stages.run("build")
        assert built.returncode == 0, built.stdout[-6000:] + built.stderr[-2000:]
        assert "Launch or adopt" not in built.stdout  # nothing provisioned by the retry
        assert instances(build_id) == first
        record = json.loads((tmp_path / "artifacts" / "image.json").read_text())
        data = Path(record["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        assert gzip.decompress(data)[:4] == b"QFI\xfb"

        down = stages.run("teardown")
        assert down.returncode == 0, down.stdout[-6000:]
        assert first[0] in down.stdout  # the summary names the instance removed
        assert [r for r in resources_of(build_id) if r["provider"] != "digitalocean"] == []
        assert not (tmp_path / "state" / build_id).exists()

        # the boot check has tests of its own (test_boot_check.py); this one is about the stages
        published = stages.run("publish", do_image_publish_boot_check=False)
        assert published.returncode == 0, published.stdout[-6000:] + published.stderr[-2000:]
        images = [r for r in resources() if r["provider"] == "digitalocean" and build_id in json.dumps(r)]
        assert len(images) == 1 and images[0]["status"] == "available", images
        assert images[0]["sha256"] == record["sha256"]  # what DigitalOcean fetched from B2
        assert [r for r in resources_of(build_id) if r["provider"] == "b2"] == []

        again = stages.run("teardown")  # the workflow's failure edges may run it twice
        assert again.returncode == 0, again.stdout[-4000:]
    finally:
        module = ["-m", "nixforge.images.do_custom_image", "-a", f"state=absent build_id={build_id}"]
        subprocess.run(
            [str(BIN / "ansible"), "localhost", "-i", str(INVENTORY), *module],
            env=stages.env,
            cwd=ROOT,
            capture_output=True,
            check=False,
            timeout=300,
        )
        stages.run("teardown")
    assert resources_of(build_id) == []


def test_sd_pipeline_stage_by_stage(env: dict[str, str], tmp_path: Path) -> None:
    build_id = f"t-sdstg-{secrets.token_hex(3)}"
    stages = Stages(env, tmp_path, build_id, pipeline="sd")
    try:
        for stage in ("provision", "build", "teardown"):
            proc = stages.run(stage)
            assert proc.returncode == 0, f"{stage}: {proc.stdout[-6000:]}{proc.stderr[-2000:]}"
            if stage == "build":
                assert "Launch or adopt" not in proc.stdout and f"nixforge-builder-{build_id}" in proc.stdout
        record = json.loads((tmp_path / "artifacts" / "image.json").read_text())
        assert record["path"].endswith(".img.zst")
        assert hashlib.sha256(Path(record["path"]).read_bytes()).hexdigest() == record["sha256"]
    finally:
        stages.run("teardown")
    assert resources_of(build_id) == []
