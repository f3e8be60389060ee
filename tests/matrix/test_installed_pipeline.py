"""The collection as users install it, on the ansible-core under test (NIXFORGE_ANSIBLE_BIN):
`ansible-galaxy collection build`, `install` into an empty path, then the FQCN playbooks
`nixforge.images.build_sd_aarch64` and `nixforge.images.build_do_image` run both pipelines end
to end in the sandbox from that installed copy (not from the checkout) and leave nothing behind
(but the DigitalOcean image, which the test then removes as a user would); `ansible-builder create`
accepts the execution environment definition for that ansible-core.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SANDBOXCTL, ansible_bin
from nfsandbox.testing import leftovers_of

BIN = ansible_bin()


def clean_env(tmp: Path) -> dict[str, str]:
    """As a user elsewhere: not the checkout's ansible.cfg, collections path or home."""
    drop = ("ANSIBLE_CONFIG", "ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_HOME", "ANSIBLE_LOCAL_TEMP")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(ANSIBLE_HOME=str(tmp / ".ansible"), ANSIBLE_NOCOLOR="1")
    return env


def galaxy(tmp: Path, *args: str) -> None:
    argv = [str(BIN / "ansible-galaxy"), "collection", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp, env=clean_env(tmp), timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def sandbox_env() -> dict[str, str]:
    out = subprocess.run([str(SANDBOXCTL), "env"], capture_output=True, text=True, check=True).stdout
    pairs = [line[len("export ") :].partition("=") for line in out.splitlines() if line.startswith("export ")]
    return {key: (shlex.split(value) or [""])[0] for key, _sep, value in pairs}


def leftovers(build_id: str) -> list[dict]:
    out = subprocess.run([str(SANDBOXCTL), "resources", "--json"], capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    return leftovers_of(data["resources"] if isinstance(data, dict) else data, build_id)


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("galaxy")
    galaxy(tmp, "build", "--output-path", str(tmp / "dist"), str(ROOT))
    (built,) = (tmp / "dist").glob("nixforge-images-*.tar.gz")
    with tarfile.open(built) as archive:
        names = set(archive.getnames())
    assert {"playbooks/build_sd_aarch64.yml", "playbooks/reap.yml", "meta/runtime.yml"} <= names
    assert not [n for n in names if n.startswith((".build", ".venv", "tests/output"))]
    return built


@pytest.fixture(scope="module")
def installed(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("installed")
    target = tmp / "collections"
    galaxy(tmp, "install", "--no-deps", "-p", str(target), str(tarball))
    assert (target / "ansible_collections" / "nixforge" / "images" / "MANIFEST.json").exists()
    return target


def installed_env(installed: Path, tmp_path: Path, control: Path) -> dict[str, str]:
    """A user's environment elsewhere, with the installed collection and the sandbox's endpoints."""
    return {
        **clean_env(tmp_path),
        **sandbox_env(),
        "ANSIBLE_COLLECTIONS_PATH": str(installed),
        "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control),
        "ANSIBLE_HOST_KEY_CHECKING": "true",
    }


def run_installed(argv: list[str], env: dict[str, str], tmp_path: Path) -> str:
    """`argv` (an ansible command of the version under test) from a directory outside the checkout;
    its whole output, after asserting that it succeeded without a 2.20/2.21 deprecation."""
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1500, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
    # 2.20/2.21 deprecations are fixed in the collection, not silenced: any of them fails here
    # (INJECT_FACTS_AS_VARS among them: no action answers in ansible_facts, see
    # tests/unit/plugins/action/test_no_facts.py)
    assert "Using a template for task args is unsafe" not in output
    deprecations = [ln for ln in output.splitlines() if "[DEPRECATION WARNING]" in ln]
    assert deprecations == [], deprecations
    return output


def pipeline(name: str, installed: Path, tmp_path: Path, build_id: str, **extra: object) -> str:
    """The installed collection's pipeline playbook ``name`` against the sandbox."""
    control = Path(tempfile.mkdtemp(prefix="nfm-", dir="/tmp"))  # ssh sockets: 108 bytes at most
    extra = {
        "nixforge_build_id": build_id,
        "nixforge_output_dir": str(tmp_path / "artifacts"),
        "builder_host_state_dir": str(tmp_path / "state"),
        **extra,
    }
    argv = [str(BIN / "ansible-playbook"), "-i", str(ROOT / "inventories" / "sandbox")]
    argv += [f"nixforge.images.{name}", "-e", json.dumps(extra)]
    try:
        return run_installed(argv, installed_env(installed, tmp_path, control), tmp_path)
    finally:
        shutil.rmtree(control, ignore_errors=True)


def test_installed_sd_pipeline_runs(sandbox_up: None, installed: Path, tmp_path: Path) -> None:
    build_id = "t-matrix-" + secrets.token_hex(3)
    pipeline("build_sd_aarch64", installed, tmp_path, build_id)
    images = list((tmp_path / "artifacts").glob("*.img.zst"))
    assert len(images) == 1 and images[0].stat().st_size > 0
    assert leftovers(build_id) == []
    assert not (tmp_path / "state" / "id_ed25519").exists()


def test_installed_do_pipeline_runs(sandbox_up: None, installed: Path, tmp_path: Path) -> None:
    """The DigitalOcean pipeline's own actions on the version under test: the preflight's
    check-mode module runs, the builder's upload to B2, the import and the boot check."""
    build_id = "t-matrix-do-" + secrets.token_hex(3)
    output = pipeline("build_do_image", installed, tmp_path, build_id)
    try:
        assert "Imported image " in output and "It booted in " in output, output[-6000:]
        assert [r["type"] for r in leftovers(build_id)] == ["do_image"]  # the product, and only it
    finally:  # what a user does with the image when done: the module, by build id
        control = Path(tempfile.mkdtemp(prefix="nfm-", dir="/tmp"))
        argv = [str(BIN / "ansible"), "localhost", "-i", str(ROOT / "inventories" / "sandbox")]
        argv += ["-m", "nixforge.images.do_custom_image", "-a", f"state=absent build_id={build_id}"]
        run_installed(argv, installed_env(installed, tmp_path, control), tmp_path)
        shutil.rmtree(control, ignore_errors=True)
    assert leftovers(build_id) == []


def test_execution_environment_definition(tarball: Path, tmp_path: Path) -> None:
    """ansible-builder create accepts awx/execution-environment.yml with this ansible-core, and
    the build context carries the collection and the requirements meta/execution-environment.yml
    names."""
    version = subprocess.run(
        [str(BIN / "python"), "-c", "import ansible.release as r; print(r.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    definition = yaml.safe_load((ROOT / "awx" / "execution-environment.yml").read_text())
    supported = definition["dependencies"]["ansible_core"]["package_pip"]
    assert_in_range(version, supported)
    definition["dependencies"]["ansible_core"]["package_pip"] = f"ansible-core=={version}"
    ee = tmp_path / "ee"
    ee.mkdir()
    shutil.copy(ROOT / "awx" / "requirements.yml", ee / "requirements.yml")
    shutil.copy(tarball, ee / tarball.name)
    (ee / "execution-environment.yml").write_text(yaml.safe_dump(definition, sort_keys=False))
    context = tmp_path / "context"
    argv = [str(BIN / "ansible-builder"), "create", "-f", str(ee / "execution-environment.yml"), "-c", str(context)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recipe = next(p for p in (context / "Containerfile", context / "Dockerfile") if p.exists()).read_text()
    assert f"ansible-core=={version}" in recipe
    assert (context / "_build" / "collections" / tarball.name).exists()
    meta = yaml.safe_load((ROOT / "meta" / "execution-environment.yml").read_text())
    assert meta["dependencies"] == {"python": "requirements.txt", "system": "bindep.txt"}


def assert_in_range(version: str, spec: str) -> None:
    """The EE definition's ansible-core range admits the version under test."""
    from packaging.specifiers import SpecifierSet

    assert version in SpecifierSet(spec.removeprefix("ansible-core")), f"{spec} does not admit {version}"
