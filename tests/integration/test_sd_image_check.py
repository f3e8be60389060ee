"""The SD image check in the SD pipeline (playbooks/build-sd-aarch64.yml), end to end in
the sandbox: a builder that produces a corrupt image (an ext4 superblock whose bytes were
altered, so that only e2fsck can tell) fails the pipeline after the fetch, with the
partition and e2fsck's output in the message, the image removed from the controller and
nothing of the build left in `sandboxctl resources --json`.

The corrupt image comes through the path every user's image takes: a flake directory on
the controller (nixos_image_flake), copied to the builder and built there by Nix, the
artifact fetched with its sha256 checked on both ends (so the fetch itself is sound: the
bytes were wrong on the builder already).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _pipeline import ROOT, new_id, playbook_env, resources_of, run_playbook, sandbox_env, set_faults
from _record import failures, recording, records, result_of
from nfsandbox.sdcard import corrupt_root_superblock, make_sd_image

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.spread]

PLAYBOOK = ROOT / "playbooks" / "build-sd-aarch64.yml"
IMAGE = "nixos-sd-image-test-aarch64-linux.img.zst"
# A flake whose SD image is a file of the flake: Nix on the builder copies it into the
# output, where nixos_image looks for sd-image/*.img.zst.
FLAKE = (
    """{
  outputs = { self }: {
    nixosConfigurations.sd-aarch64.config.system.build.sdImage = builtins.derivation {
      name = "nixos-sd-image-test";
      system = "aarch64-linux";
      builder = "/bin/sh";
      args = [ "-c" "mkdir -p $out/sd-image && cp ${./image.img.zst} $out/sd-image/%s" ];
      PATH = "/usr/bin:/bin";
    };
  };
}
"""
    % IMAGE
)


@pytest.fixture(scope="module")
def env(sandbox_instance: object) -> dict[str, str]:
    out = sandbox_env()
    assert out is not None
    set_faults(out, "ec2", {})
    return out


def flake_with_image(directory: Path, corrupt: bool) -> Path:
    image = make_sd_image(directory / "make", name="image.img")
    if corrupt:
        corrupt_root_superblock(image)
    shutil.move(str(image), directory / "image.img.zst")
    shutil.rmtree(directory / "make")
    (directory / "flake.nix").write_text(FLAKE)
    return directory


def test_a_corrupt_image_fails_the_pipeline_naming_the_partition(env: dict[str, str], tmp_path: Path) -> None:
    build_id = new_id("t-sdbad")
    flake = flake_with_image(tmp_path / "flake", corrupt=True)
    artifacts = tmp_path / "artifacts"
    variables = {
        "nixforge_build_id": build_id,
        "nixforge_output_dir": str(artifacts),
        "builder_host_state_dir": str(tmp_path / "state"),
        "nixos_image_flake": str(flake),
    }
    proc = run_playbook(PLAYBOOK, recording(playbook_env(env), tmp_path / "record.jsonl"), variables)
    assert proc.returncode != 0, proc.stdout[-6000:]
    recorded = records(tmp_path / "record.jsonl")
    # the fetch was sound (the builder's sha256 is the controller's), the check was not
    fetched = result_of(recorded, "Fetch the artifact to the controller", "ok")["result"]
    check = result_of(recorded, "Check the SD image's partition table and file systems", "failed")["result"]
    assert check["path"] == fetched["path"] == str(artifacts / IMAGE)
    text = " ".join(check["msg"].split())
    assert text.startswith("The SD image %s is corrupt: partition 2 (type 0x83 Linux, ext4 NIXOS_SD," % fetched["path"])
    assert "e2fsck -fn found errors (exit 4):" in text and "checksum" in text, text
    assert text.endswith("It was removed (keep_corrupt: true keeps it for inspection).") and check["removed"] is True
    # the play's own message: the build failed, everything was removed, and why
    message = " ".join(str(failures(recorded)[-1]["result"]["msg"]).split())
    assert message.startswith("Build %s failed and everything it created was removed. " % build_id), message
    assert "partition 2 (type 0x83 Linux, ext4 NIXOS_SD" in message and "e2fsck -fn" in message, message
    # never reported as built; nothing of it on the controller or in the sandbox
    assert not [r for r in recorded if r["task"].endswith("Summary")]
    assert sorted(p.name for p in artifacts.iterdir() if not p.name.endswith(".build.log")) == []
    assert resources_of(build_id) == []


def test_a_sound_image_of_a_users_flake_is_checked_and_summarised(env: dict[str, str], tmp_path: Path) -> None:
    """The same flake with the image left intact: the pipeline succeeds and its summary
    names both partitions (type, file system, label, size)."""
    build_id = new_id("t-sdok")
    flake = flake_with_image(tmp_path / "flake", corrupt=False)
    variables = {
        "nixforge_build_id": build_id,
        "nixforge_output_dir": str(tmp_path / "artifacts"),
        "builder_host_state_dir": str(tmp_path / "state"),
        "nixos_image_flake": str(flake),
    }
    proc = run_playbook(PLAYBOOK, recording(playbook_env(env), tmp_path / "record.jsonl"), variables)
    assert proc.returncode == 0, proc.stdout[-6000:]
    recorded = records(tmp_path / "record.jsonl")
    check = result_of(recorded, "Check the SD image's partition table and file systems", "ok")["result"]
    assert [p["label"] for p in check["partitions"]] == ["FIRMWARE", "NIXOS_SD"]
    lines = [" ".join(line.split()) for line in result_of(recorded, "Summary", "ok")["result"]["msg"]]
    assert (
        "Partitions: 1: FAT16 FIRMWARE, 30.0 MiB at 8.0 MiB (type 0x0b W95 FAT32);"
        " 2: ext4 NIXOS_SD, 40.0 MiB at 38.0 MiB (type 0x83 Linux, bootable)"
    ) in lines, lines
    assert (tmp_path / "artifacts" / IMAGE).is_file()
    assert resources_of(build_id) == []
