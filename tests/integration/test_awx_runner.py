"""The AWX job templates run the way AWX runs them: `ansible-runner` with a private data
directory holding the project, the inventory (the sandbox's endpoints plus the builders
inventory source, inventories/awx/nixforge.builders.yml), the survey answers and the
template's extra vars in env/extravars, and in env/envvars exactly what the credential
types' injectors (awx/credential_types/, and AWX's own Amazon Web Services type) inject for
the credentials the template lists. Each workflow's stage templates (four for DigitalOcean,
three for the SD image) run in order against the sandbox, then the reap template removes
what the build made; nothing of the build is left. The DigitalOcean stages also get the
jobs an operator adds by relaunching a template: a build before any provision (refused, no
builder in the inventory), a build that fails (a wrong image definition) and is relaunched
on the same builder with nothing provisioned again, and the teardown run twice (the
workflow's failure edges may). Nothing passes between the jobs but files on the shared
volume (the per-build state directory, image.json) and the provider's tags; each build job
finds its builder only through the inventory source (no cache, host key pinned).

Also `ansible-builder create` on awx/execution-environment.yml, and `ansible-builder
introspect` on the installed collection: the requirement files of meta/execution-environment.yml
reach the execution environment.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _pipeline import BIN, ROOT, playbook_env, resources_of

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.spread]

AWX = ROOT / "awx"
SEARCH_PATH = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
RUNNER = shutil.which("ansible-runner", path=SEARCH_PATH)
BUILDER = shutil.which("ansible-builder", path=SEARCH_PATH)
# AWX's built-in Amazon Web Services credential type injects these.
AWS_INJECTED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN")
# credential key of awx/job_templates.yml -> (credential type file, its inputs from the sandbox's variables)
CREDENTIALS = {
    "digitalocean": ("digitalocean.yml", {"token": "DIGITALOCEAN_TOKEN", "api_url": "DIGITALOCEAN_API_URL"}),
    "b2": (
        "backblaze_b2.yml",
        {
            "application_key_id": "B2_APPLICATION_KEY_ID",
            "application_key": "B2_APPLICATION_KEY",
            "api_url": "B2_API_URL",
        },
    ),
    "metal": (
        "equinix_metal.yml",
        {"auth_token": "METAL_AUTH_TOKEN", "api_url": "METAL_API_URL", "project_id": "METAL_PROJECT_ID"},
    ),
}


def injected(env: dict[str, str], keys: list[str]) -> dict[str, str]:
    """What AWX puts in a job's environment for these credentials: each type's injectors,
    rendered with the inputs (only {{ field }} templates are used by our types)."""
    out: dict[str, str] = {}
    for key in keys:
        if key == "aws":
            out.update({k: env[k] for k in AWS_INJECTED if env.get(k)})
            continue
        filename, inputs = CREDENTIALS[key]
        ctype = yaml.safe_load((AWX / "credential_types" / filename).read_text())
        values = {field: env[var] for field, var in inputs.items()}
        for name, template in ctype["injectors"]["env"].items():
            out[name] = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m, values=values: values[m.group(1)], template)
    return out


def all_injected_names() -> set[str]:
    names = set(AWS_INJECTED)
    for filename, _inputs in CREDENTIALS.values():
        names |= set(yaml.safe_load((AWX / "credential_types" / filename).read_text())["injectors"]["env"])
    return names


class PrivateDataDir:
    def __init__(self, env: dict[str, str], tmp: Path, build_id: str) -> None:
        self.env = env
        self.dir = tmp / "pdd"
        self.shared = tmp / "shared"  # the volume AWX jobs share (/var/lib/nixforge)
        (self.dir / "env").mkdir(parents=True)
        (self.dir / "project").symlink_to(ROOT)
        inventory = self.dir / "inventory"
        shutil.copytree(ROOT / "inventories" / "sandbox", inventory)  # localhost and the sandbox's endpoints
        source = yaml.safe_load((ROOT / "inventories" / "awx" / "nixforge.builders.yml").read_text())
        # read anew by every job (AWX updates the source on launch): a stage sees the builder
        # the job before it made
        assert not [k for k in source if k.startswith("cache")], source
        source.update(
            state_dirs=[str(self.shared / "state")],
            known_hosts_dir=str(self.shared / "known_hosts"),
            build_ids=[build_id],
            # the sandbox's endpoints (a site setting under AWX, not a credential)
            endpoint_url="{{ lookup('ansible.builtin.env', 'AWS_ENDPOINT_URL') }}",
            metal_ca_bundle="{{ lookup('ansible.builtin.env', 'NIXFORGE_SANDBOX_METAL_CA_BUNDLE') }}",
        )
        (inventory / "nixforge.builders.yml").write_text(yaml.safe_dump(source))
        self.build_id = build_id
        self.templates = {
            t["playbook"]: t for t in yaml.safe_load((AWX / "job_templates.yml").read_text())["job_templates"]
        }
        self.defaults = yaml.safe_load((AWX / "job_templates.yml").read_text())["defaults"]
        self.ran: list[tuple[str, str]] = []  # (playbook, status) of every job, in order

    def extravars(self, survey: dict[str, Any]) -> dict[str, Any]:
        defaults = json.loads(json.dumps(self.defaults["extra_vars"]).replace("/var/lib/nixforge", str(self.shared)))
        return {**defaults, **survey}

    def job(self, playbook: str, survey: dict[str, Any]) -> tuple[subprocess.CompletedProcess, str]:
        template = self.templates[playbook]
        site = {k: v for k, v in self.env.items() if k not in all_injected_names()}
        envvars = {**playbook_env(site), **injected(self.env, template["credentials"])}
        envvars.pop("PATH", None)
        (self.dir / "env" / "envvars").write_text(yaml.safe_dump(envvars))
        (self.dir / "env" / "extravars").write_text(yaml.safe_dump(self.extravars(survey)))
        ident = f"{len(self.ran) + 1:02d}-{Path(playbook).stem}"  # one per job, as AWX's job ids
        proc = subprocess.run(
            [str(RUNNER), "run", str(self.dir), "-p", playbook, "--ident", ident],
            env={"PATH": SEARCH_PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        status = (self.dir / "artifacts" / ident / "status").read_text().strip()
        self.ran.append((playbook, status))
        return proc, status


def workflow_playbooks(first: str) -> list[str]:
    """The playbooks of the workflow that starts with `first`, along its success edges."""
    listed = yaml.safe_load((AWX / "job_templates.yml").read_text())["job_templates"]
    templates = {t["name"]: t["playbook"] for t in listed}
    for workflow in yaml.safe_load((AWX / "workflows.yml").read_text())["workflows"]:
        nodes = {n["identifier"]: n for n in workflow["nodes"]}
        if templates[workflow["nodes"][0]["unified_job_template"]["name"]] != first:
            continue
        out, current = [], workflow["nodes"][0]["identifier"]
        while current:
            out.append(templates[nodes[current]["unified_job_template"]["name"]])
            success = nodes[current].get("related", {}).get("success_nodes", [])
            current = success[0]["identifier"] if success else ""
        return out
    raise AssertionError(f"no workflow starts with {first}")


def survey_for(env: dict[str, str], build_id: str, do_image: bool) -> dict[str, Any]:
    """The survey answers of a test build (EC2 builder; the DigitalOcean questions when asked)."""
    survey: dict[str, Any] = {
        "nixforge_build_id": build_id,
        "builder_host_provider": "ec2",
        "builder_host_ec2_region": "us-east-1",
        "builder_host_ttl": "1h",
    }
    if do_image:
        survey.update(do_image_publish_bucket=env["NIXFORGE_SANDBOX_B2_PUBLIC_BUCKET"], do_image_publish_region="nyc3")
    return survey


def check_products(shared: Path, build_id: str, do_image: bool) -> None:
    """Only the product is left: the available DigitalOcean image, or the SD image on the volume."""
    products = [r for r in resources_of(build_id) if r["provider"] == "digitalocean"]
    if do_image:
        assert len(products) == 1 and products[0]["status"] == "available", products
    else:
        assert products == []
        assert list((shared / "artifacts" / build_id).glob("*.img*")), "no image on the volume"
    assert [r for r in resources_of(build_id) if r["provider"] != "digitalocean"] == []


@contextlib.contextmanager
def reaped_at_the_end(pdd: PrivateDataDir, build_id: str) -> Iterator[None]:
    """Run the reap template for the build whatever happens; when the body passed, it must
    succeed and leave nothing of the build."""
    try:
        yield
    finally:
        proc, status = pdd.job("playbooks/reap.yml", {"nixforge_build_id": build_id})
    assert status == "successful", proc.stdout[-6000:]
    assert resources_of(build_id) == []


def instances(build_id: str) -> list[str]:
    return [r["id"] for r in resources_of(build_id) if r["provider"] == "ec2" and r["type"] == "instance"]


def flat(proc: subprocess.CompletedProcess) -> str:
    return " ".join(proc.stdout.split())


def succeeded(job: tuple[subprocess.CompletedProcess, str], playbook: str) -> subprocess.CompletedProcess:
    proc, status = job
    assert status == "successful", f"{playbook}: {proc.stdout[-6000:]}{proc.stderr[-2000:]}"
    return proc


def failed(job: tuple[subprocess.CompletedProcess, str], playbook: str) -> str:
    proc, status = job
    assert status == "failed", f"{playbook}: {status}: {proc.stdout[-3000:]}"
    return flat(proc)


def check_pinned_host_key(shared: Path, build_id: str) -> None:
    """The inventory source wrote the builder a known_hosts file of its own (the one ssh is
    told to use, with StrictHostKeyChecking=yes) holding the host key provision recorded."""
    state = shared / "state" / build_id
    recorded = next(p for p in (state / "ssh_host_ed25519_key.pub", state / "known_hosts") if p.is_file())

    def key(text: str) -> list[str]:
        words = text.split()
        return next(words[i : i + 2] for i, w in enumerate(words) if w.startswith("ssh-"))

    pinned = (shared / "known_hosts" / f"nixforge-builder-{build_id}").read_text()
    assert len(pinned.splitlines()) == 1 and key(pinned) == key(recorded.read_text()), pinned


def do_stages(pdd: PrivateDataDir, playbooks: list[str], survey: dict[str, Any], tmp: Path) -> None:
    """The DigitalOcean workflow's templates with the jobs an operator adds: relaunches."""
    build_id, shared = pdd.build_id, tmp / "shared"
    provision, build, teardown, publish = playbooks  # the workflow's order (checked by the caller)

    early = failed(pdd.job(build, survey), build)
    assert f"the inventory has no builder nixforge-builder-{build_id}" in early, early[-3000:]

    succeeded(pdd.job(provision, survey), provision)
    first = instances(build_id)
    assert len(first) == 1, resources_of(build_id)

    # a build that fails (a wrong image definition) leaves the builder for a relaunch
    wrong = failed(pdd.job(build, {**survey, "nixos_image_flake": str(tmp / "no-such-flake")}), build)
    assert "no flake.nix" in wrong and "left for a retry" in wrong, wrong[-4000:]
    assert f"nixforge-builder-{build_id}" in wrong  # it reached the builder (through the inventory source)
    assert instances(build_id) == first

    built = succeeded(pdd.job(build, survey), build)
    assert "Launch or adopt" not in built.stdout  # nothing provisioned by the relaunch
    assert f"nixforge-builder-{build_id}" in built.stdout
    assert instances(build_id) == first
    check_pinned_host_key(shared, build_id)
    record = json.loads((shared / "artifacts" / build_id / "image.json").read_text())
    data = Path(record["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == record["sha256"]
    assert gzip.decompress(data)[:4] == b"QFI\xfb"  # a gzipped qcow2

    down = succeeded(pdd.job(teardown, survey), teardown)
    assert first[0] in down.stdout  # the summary names the instance removed
    assert [r for r in resources_of(build_id) if r["provider"] != "digitalocean"] == []
    assert not (shared / "state" / build_id).exists()

    succeeded(pdd.job(publish, survey), publish)  # the boot check off: test_boot_check.py's
    images = [r for r in resources_of(build_id) if r["provider"] == "digitalocean"]
    assert len(images) == 1 and images[0]["status"] == "available", images
    assert images[0]["sha256"] == record["sha256"]  # what DigitalOcean fetched from B2
    assert [r for r in resources_of(build_id) if r["provider"] == "b2"] == []

    succeeded(pdd.job(teardown, survey), teardown)  # the workflow's failure edges may run it twice

    # the jobs that succeeded are the workflow's, in its order (and the second teardown)
    assert [p for p, status in pdd.ran if status == "successful"] == [*playbooks, teardown], pdd.ran
    assert [p for p, status in pdd.ran if status != "successful"] == [build, build], pdd.ran


def sd_stages(pdd: PrivateDataDir, playbooks: list[str], survey: dict[str, Any], tmp: Path) -> None:
    build_id, shared = pdd.build_id, tmp / "shared"
    for playbook in playbooks:
        proc = succeeded(pdd.job(playbook, survey), playbook)
        if playbook.endswith("_build.yml"):
            assert "Launch or adopt" not in proc.stdout  # nothing provisioned by the build stage
            assert f"nixforge-builder-{build_id}" in proc.stdout  # found through the inventory source
            check_pinned_host_key(shared, build_id)
    assert [p for p, _status in pdd.ran] == playbooks
    record = json.loads((shared / "artifacts" / build_id / "image.json").read_text())
    assert record["path"].endswith(".img.zst")
    assert hashlib.sha256(Path(record["path"]).read_bytes()).hexdigest() == record["sha256"]


@pytest.mark.skipif(RUNNER is None, reason="ansible-runner is not installed (tests/requirements.txt)")
@pytest.mark.parametrize("pipeline", ["do", "sd"])
def test_stage_workflow_templates_through_ansible_runner(env: dict[str, str], tmp_path: Path, pipeline: str) -> None:
    """Each pipeline's stage templates, in the order of its workflow, each one job; the
    DigitalOcean ones also relaunched as an operator does (do_stages)."""
    build_id = f"t-awx-{pipeline}-{os.urandom(3).hex()}"
    pdd = PrivateDataDir(env, tmp_path, build_id)
    survey = survey_for(env, build_id, pipeline == "do")
    if pipeline == "do":  # the whole-pipeline template below runs the boot check through AWX
        survey["do_image_publish_boot_check"] = False
    playbooks = workflow_playbooks(f"playbooks/{pipeline}_stage_provision.yml")
    stages = ("provision", "build", "teardown", "publish") if pipeline == "do" else ("provision", "build", "teardown")
    assert playbooks == [f"playbooks/{pipeline}_stage_{stage}.yml" for stage in stages], playbooks
    with reaped_at_the_end(pdd, build_id):
        (do_stages if pipeline == "do" else sd_stages)(pdd, playbooks, survey, tmp_path)
        check_products(tmp_path / "shared", build_id, pipeline == "do")
        stdout = "".join(p.read_text() for p in (tmp_path / "pdd" / "artifacts").glob("*/stdout"))
        for name in ("DIGITALOCEAN_TOKEN", "B2_APPLICATION_KEY", "METAL_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY"):
            assert env[name] not in stdout


@pytest.mark.skipif(RUNNER is None, reason="ansible-runner is not installed (tests/requirements.txt)")
@pytest.mark.parametrize("pipeline", ["build_sd_aarch64", "build_do_image"])
def test_whole_pipeline_templates_through_ansible_runner(env: dict[str, str], tmp_path: Path, pipeline: str) -> None:
    """The two whole-pipeline job templates, each one job, as AWX runs them."""
    build_id = f"t-awx-{os.urandom(3).hex()}"
    pdd = PrivateDataDir(env, tmp_path, build_id)
    with reaped_at_the_end(pdd, build_id):
        proc, status = pdd.job(f"playbooks/{pipeline}.yml", survey_for(env, build_id, pipeline == "build_do_image"))
        assert status == "successful", f"{proc.stdout[-6000:]}{proc.stderr[-2000:]}"
        check_products(tmp_path / "shared", build_id, pipeline == "build_do_image")


def galaxy(tmp: Path, *args: str) -> None:
    """ansible-galaxy collection as a user elsewhere runs it (not the checkout's ansible.cfg)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ANSIBLE_CONFIG", "ANSIBLE_COLLECTIONS_PATH")}
    env["ANSIBLE_HOME"] = str(tmp / ".ansible")
    argv = [str(BIN / "ansible-galaxy"), "collection", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(BUILDER is None, reason="ansible-builder is not installed (tests/requirements.txt)")
def test_ansible_builder_context_and_introspection(tmp_path: Path) -> None:
    ee_dir = tmp_path / "ee"
    ee_dir.mkdir()
    for name in ("execution-environment.yml", "requirements.yml"):
        shutil.copy(AWX / name, ee_dir / name)
    galaxy(tmp_path, "build", "--output-path", str(ee_dir), str(ROOT))
    context = tmp_path / "context"
    proc = subprocess.run(
        [str(BUILDER), "create", "-f", str(ee_dir / "execution-environment.yml"), "-c", str(context)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = {p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file()}
    version = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    assert f"_build/collections/nixforge-images-{version}.tar.gz" in files
    assert "_build/requirements.yml" in files and ({"Containerfile", "Dockerfile"} & files)

    # what the image build will compute from the installed collection
    installed = tmp_path / "installed"
    galaxy(tmp_path, "install", "--no-deps", "-p", str(installed), str(ee_dir / f"nixforge-images-{version}.tar.gz"))
    proc = subprocess.run(
        [str(BUILDER), "introspect", str(installed)], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    found = yaml.safe_load(proc.stdout)
    ours = "# from collection nixforge.images"
    python = {line.split("#")[0].strip() for line in found["python"] if line.endswith(ours)}
    wanted = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert python == set(wanted)
    system = {line.split("#")[0].strip() for line in found["system"] if line.endswith(ours)}
    assert {"openssh-clients [platform:rpm]", "openssh-client [platform:dpkg]"} <= system
    assert "zstd [platform:dpkg platform:rpm]" in system
