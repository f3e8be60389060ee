"""The nix_build action's last steps on a fake builder: the command that looks for the
artifact, and how one, none or several artifacts read. The real build is in the
integration tests (test_playbook_*)."""

from __future__ import annotations

import json
import shlex
from typing import Any

from ansible_collections.nixforge.images.plugins.action import nix_build as action

PLAN: dict[str, Any] = dict(
    label="sd-aarch64",
    work_dir="/var/lib/nixforge/b1",
    artifact_dir="sd-image",
    patterns=["*.img.zst"],
    describe="SD image (*.img.zst)",
    kind="sd",
    default_attribute="sdImage",
)


def found(*paths: str, **extra: Any) -> dict[str, Any]:
    return dict(found=list(paths), out="/var/lib/nixforge/b1/result", listing=["a.txt"], size=42, **extra)


def test_find_runs_the_finder_with_the_interpreter_and_reads_its_last_line() -> None:
    seen = []
    mod = object.__new__(action.ActionModule)
    answer = found("/nix/store/x/sd-image/n.img.zst")

    def sh(command: str, what: str) -> str:
        seen.append((shlex.split(command), what))
        return "noise\n" + json.dumps(answer) + "\n"

    mod._sh = sh  # type: ignore[method-assign]
    assert mod._find(PLAN, {"method": "nix", "sha256": True}, "/usr/bin/python3") == answer
    argv, what = seen[0]
    assert argv[:2] == ["/usr/bin/python3", "-c"] and what == "Looking for the artifact"
    assert argv[3:] == ["/var/lib/nixforge/b1/result", "sd-image", '["*.img.zst"]', "1"]
    mod._find(PLAN, {"method": "docker", "sha256": False}, "python3")
    assert seen[1][0][0] == "python3" and seen[1][0][3:4] == ["/var/lib/nixforge/b1/out"] and seen[1][0][-1] == "0"


def test_report_gives_the_one_artifact() -> None:
    result = action.ActionModule._report({}, PLAN, found("/o/sd-image/n.img.zst", sha256="ab" * 32), 12.345)
    assert result == dict(
        changed=True, artifact="/o/sd-image/n.img.zst", name="n.img.zst", size=42, build_seconds=12.3, sha256="ab" * 32
    )
    assert "sha256" not in action.ActionModule._report({}, PLAN, found("/o/n.img.zst"), 1.0)


def test_report_fails_on_none_or_several_saying_what_the_output_holds() -> None:
    none = action.ActionModule._report({}, PLAN, found(), 1.0)
    assert none["failed"] and "has no SD image (*.img.zst) (nixos_image_kind: sd); it holds: a.txt." in none["msg"]
    assert "sdImage in the shipped definitions" in none["msg"] and "artifact" not in none
    two = action.ActionModule._report({}, PLAN, found("/o/a.img.zst", "/o/b.img.zst"), 1.0)
    assert two["failed"] and "has 2 SD image" in two["msg"]
