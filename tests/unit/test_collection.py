"""The collection's metadata holds together: what galaxy builds, what runtime.yml promises."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _load(path: str):
    return yaml.safe_load((ROOT / path).read_text())


def test_action_groups_name_only_modules_or_groups():
    runtime = _load("meta/runtime.yml")
    modules = {p.stem for p in (ROOT / "plugins" / "modules").glob("*.py")}
    groups = runtime["action_groups"]
    planned = {"b2_object", "do_custom_image"}  # fixed names of the DigitalOcean pipeline to come
    for name, members in groups.items():
        for member in members:
            if isinstance(member, dict):
                for extended in member["metadata"]["extend_group"]:
                    assert extended.split(".")[-1] in groups, f"{name} extends unknown group {extended}"
            else:
                assert member in modules | planned, f"action group {name} lists unknown module {member}"
    grouped = {m for members in groups.values() for m in members if isinstance(m, str)}
    # action plugins that work on hosts (wait_for_builder, ...) and modules that run on the
    # builder (nix_daemon, host_changes) take no cloud credentials
    host_actions = {p.stem for p in (ROOT / "plugins" / "action").glob("*.py")}
    cloud = modules - host_actions - {"nix_daemon", "host_changes"}
    assert cloud <= grouped, f"cloud modules missing from action_groups: {sorted(cloud - grouped)}"


def test_requirements_are_ranges_and_constraints_are_pins():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert "==" not in line, f"requirements.txt must use ranges for execution environments: {line}"
    pins = [
        line
        for line in (ROOT / "tests" / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert pins, "tests/constraints.txt is empty"
    assert all(re.match(r"^[A-Za-z0-9_.\-\[\]]+==\S+$", pin) for pin in pins), "constraints must be exact pins"


def test_execution_environment_points_at_dependency_files():
    ee = _load("meta/execution-environment.yml")
    assert (ROOT / ee["dependencies"]["python"]).is_file()
    assert (ROOT / ee["dependencies"]["system"]).is_file()


def test_built_collection_leaves_out_the_sandbox_and_tooling(tmp_path):
    galaxy = Path(sys.executable).with_name("ansible-galaxy")
    if not galaxy.exists():
        pytest.skip("ansible-galaxy is not installed next to this Python (run make venv)")
    subprocess.run(
        [str(galaxy), "collection", "build", "--output-path", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (tarball,) = tmp_path.glob("nixforge-images-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert "galaxy.yml" not in names and "MANIFEST.json" in names
    assert "meta/runtime.yml" in names and "README.md" in names
    leaked = [n for n in names if n.startswith((".venv", ".build", "tests/sandbox", ".ci", ".git"))]
    assert not leaked, f"built collection carries development files: {leaked[:5]}"
