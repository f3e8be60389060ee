"""The playbooks of the installed collection: `ansible-galaxy collection build`, install into
an empty path, then `ansible-playbook nixforge.images.build_sd_aarch64` runs the SD pipeline
in the sandbox from there (not from the checkout) and leaves nothing behind.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tarfile
from pathlib import Path

import pytest
from _pipeline import BIN, INVENTORY, ROOT, playbook_env, resources_of, sandbox_env
from nfsandbox.testing import ansible_playbook

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def galaxy(*args: str, cwd: Path) -> None:
    # As a user elsewhere would: not the checkout's ansible.cfg or collections path (from
    # there the checkout's linked collection counts as installed and nothing is installed).
    env = {k: v for k, v in os.environ.items() if k not in ("ANSIBLE_CONFIG", "ANSIBLE_COLLECTIONS_PATH")}
    env["ANSIBLE_HOME"] = str(cwd / ".ansible")
    proc = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("galaxy")
    galaxy("build", "--output-path", str(tmp / "dist"), str(ROOT), cwd=tmp)
    (tarball,) = (tmp / "dist").glob("nixforge-images-*.tar.gz")
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    # the playbook once, under its collection name, and the path wrapper next to it
    assert {"playbooks/build_sd_aarch64.yml", "playbooks/build-sd-aarch64.yml", "playbooks/reap.yml"} <= names
    assert not [n for n in names if "/.nixforge" in n or n.startswith((".build", ".venv"))]
    target = tmp / "collections"
    assert not target.exists()
    galaxy("install", "--no-deps", "-p", str(target), str(tarball), cwd=tmp)
    return target


def run(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = playbook_env(sandbox_env() or {}, ANSIBLE_COLLECTIONS_PATH=str(installed))
    env["ANSIBLE_COLLECTIONS_SCAN_SYS_PATH"] = "false"
    return ansible_playbook(["-i", str(INVENTORY), *args], env, timeout=1800, cwd=cwd)


def test_collection_playbook_names_resolve(installed: Path, tmp_path: Path) -> None:
    for name in ("nixforge.images.build_sd_aarch64", "nixforge.images.reap"):
        proc = run(installed, tmp_path, name, "--syntax-check")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    # the dash name stays a path, not a collection name
    proc = run(installed, tmp_path, str(ROOT / "playbooks" / "build-sd-aarch64.yml"), "--syntax-check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_installed_sd_pipeline_runs(installed: Path, tmp_path: Path) -> None:
    build_id = "t-inst-" + secrets.token_hex(3)
    variables = '{"nixforge_build_id": "%s", "nixforge_output_dir": "%s", "builder_host_state_dir": "%s"}' % (
        build_id,
        tmp_path / "artifacts",
        tmp_path / "state",
    )
    proc = run(installed, tmp_path, "nixforge.images.build_sd_aarch64", "-e", variables)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
    images = list((tmp_path / "artifacts").glob("*.img.zst"))
    assert len(images) == 1 and images[0].stat().st_size > 0
    assert resources_of(build_id) == []
    left = [p for p in installed.rglob("*") if ".nixforge" in p.parts or p.suffix == ".zst"]
    assert left == []
    assert not os.path.exists(tmp_path / "state" / "id_ed25519")
