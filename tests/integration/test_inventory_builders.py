"""The `builders` inventory plugin against the sandbox: builders made by the modules (through
builder_host) in two EC2 regions and on Metal are found by `ansible-inventory` with the
example file inventories/sandbox-builders/, with their hostvars and groups; the cache
spares the APIs (counted in the emulators); `ansible -m ping` goes through the inventory
with host key checking on, and a wrong pinned key is refused.

DigitalOcean: the plugin reads the sandbox's DigitalOcean emulator when the sandbox has one
(which has no droplets yet); the droplet records themselves are covered by unit tests.
"""

from __future__ import annotations

import json
import secrets
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _pipeline import BIN, ROOT, keygen, playbook_env, resources_of, run_playbook, sandbox_env

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

INVENTORY = ROOT / "inventories" / "sandbox-builders"
PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: "{{ 'Provision' if not teardown else 'Tear down' }} the builders"
      ansible.builtin.include_role:
        name: nixforge.images.builder_host
        tasks_from: "{{ 'teardown' if teardown else 'main' }}"
      vars:
        builder_host_build_id: "{{ nf_builder.id }}"
        builder_host_provider: "{{ nf_builder.provider }}"
        builder_host_pipeline: "{{ nf_builder.pipeline }}"
        builder_host_state_dir: "{{ state_root }}/{{ nf_builder.id }}"
        builder_host_ec2_region: "{{ nf_builder.region | default('us-east-1') }}"
      loop: "{{ builders }}"
      loop_control:
        loop_var: nf_builder
"""


def metal_exchanges(env: dict[str, str], method: str = "GET") -> list[dict[str, Any]]:
    """The Metal emulator's record of the requests it answered (DELETE clears it)."""
    context = ssl.create_default_context(cafile=env["NIXFORGE_SANDBOX_METAL_CA_BUNDLE"])
    request = urllib.request.Request(  # noqa: S310 - the sandbox's loopback emulator
        "https://%s/_sandbox/exchanges" % env["NIXFORGE_SANDBOX_METAL_ENDPOINT"], method=method
    )
    request.add_header("X-Auth-Token", env["METAL_AUTH_TOKEN"])
    with urllib.request.urlopen(request, timeout=30, context=context) as response:  # noqa: S310
        raw = response.read()
    return json.loads(raw)["exchanges"] if raw else []


def plain(value: Any) -> Any:
    """ansible-inventory --list marks strings from plugins as unsafe ({"__ansible_unsafe": ...})."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def ec2_calls_left(sandbox: Any) -> int:
    """What is left of the EC2 counter: a zero-second delay fault counts down per request."""
    return sandbox.call("GET", "/faults/ec2")["faults"]["delay"]["count"]


class Run:
    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.tmp = tmp
        self.state_root = tmp / "state"
        self.env = playbook_env(
            env,
            ANSIBLE_HOME=str(tmp / "ansible-home"),
            ANSIBLE_INVENTORY_CACHE_CONNECTION=str(tmp / "inventory-cache"),
            NIXFORGE_STATE_DIRS=str(self.state_root),
            ANSIBLE_HOST_KEY_CHECKING="true",
        )

    def inventory(self, *args: str, state_root: Path | None = None) -> subprocess.CompletedProcess:
        env = dict(self.env, NIXFORGE_STATE_DIRS=str(state_root or self.state_root))
        return subprocess.run(
            [str(BIN / "ansible-inventory"), "-i", str(INVENTORY), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=300,
            check=False,
        )

    def ping(self, pattern: str, *args: str, state_root: Path | None = None) -> subprocess.CompletedProcess:
        env = dict(self.env, NIXFORGE_STATE_DIRS=str(state_root or self.state_root))
        # a fresh ssh control socket directory: a master from an earlier call would skip the host key check
        env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = tempfile.mkdtemp(prefix="nfi-", dir="/tmp")
        return subprocess.run(
            [str(BIN / "ansible"), "-i", str(INVENTORY), pattern, "-m", "ansible.builtin.ping", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=300,
            check=False,
        )


def test_builders_inventory(sandbox: Any, tmp_path: Path) -> None:
    env = sandbox_env()
    assert env is not None
    tag = secrets.token_hex(3)
    builders = [
        {"id": "inv-a-" + tag, "provider": "ec2", "pipeline": "inv-sd"},
        {"id": "inv-b-" + tag, "provider": "ec2", "pipeline": "inv-sd", "region": "us-west-2"},
        {"id": "inv-c-" + tag, "provider": "metal", "pipeline": "inv-do"},
    ]
    run = Run(env, tmp_path)
    play = tmp_path / "builders.yml"
    play.write_text(PLAY)
    variables = {"builders": builders, "state_root": str(run.state_root)}
    try:
        proc = run_playbook(play, run.env, dict(variables, teardown=False))
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        check_inventory(sandbox, env, run, builders)
    finally:
        sandbox.set_faults("ec2", {})
        proc = run_playbook(play, run.env, dict(variables, teardown=True))
        assert proc.returncode == 0, proc.stdout[-6000:]
    for builder in builders:
        assert resources_of(builder["id"]) == []


def expire(env: dict[str, str], builder: dict[str, Any]) -> None:
    """Move one EC2 builder past its expiry (as if the clock had moved on)."""
    import boto3

    ec2 = boto3.client(
        "ec2",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=builder["region"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    found = ec2.describe_instances(
        Filters=[
            {"Name": "tag:nixforge-build-id", "Values": [builder["id"]]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
    )
    ids = [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]]
    assert len(ids) == 1
    ec2.create_tags(Resources=ids, Tags=[{"Key": "nixforge-expires-at", "Value": "2026-01-01T00:00:00Z"}])


def check_inventory(sandbox: Any, env: dict[str, str], run: Run, builders: list[dict[str, Any]]) -> None:
    a, b, c = ("nixforge-builder-" + x["id"] for x in builders)
    expire(env, builders[1])
    proc = run.inventory("--list", "--flush-cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = plain(json.loads(proc.stdout))
    # DigitalOcean: read through the emulator when the sandbox has one, else skipped, saying why
    skipped_do = "skipping digitalocean" in proc.stderr
    assert skipped_do == ("DIGITALOCEAN_TOKEN" not in env), proc.stderr[-2000:]
    hostvars = listed["_meta"]["hostvars"]
    for name in (a, b, c):
        assert name in hostvars, sorted(hostvars)
    assert set(listed["nixforge_expired"]["hosts"]) & {a, b, c} == {b}
    assert set(listed["nixforge_live"]["hosts"]) & {a, b, c} == {a, c}
    assert {a, b} <= set(listed["nixforge_ec2"]["hosts"]) and c in listed["nixforge_metal"]["hosts"]
    assert {a, b} <= set(listed["pipeline_inv_sd"]["hosts"]) and c in listed["pipeline_inv_do"]["hosts"]
    va, vb, vc = hostvars[a], hostvars[b], hostvars[c]
    assert (va["nixforge_provider"], va["nixforge_build_id"], va["nixforge_pipeline"]) == (
        "ec2",
        builders[0]["id"],
        "inv-sd",
    )
    assert va["nixforge_location"] == "us-east-1" and vb["nixforge_location"] == "us-west-2"
    assert va["nixforge_expired"] is False and vb["nixforge_expired"] is True
    assert vb["nixforge_expires_at"] == "2026-01-01T00:00:00Z"
    assert va["nixforge_architecture"] == "aarch64" and va["ansible_user"] == "admin"
    assert va["nixforge_lifecycle"] == "spot" and va["nixforge_price_per_hour"] > 0
    assert va["nixforge_instance_type"] and vc["nixforge_instance_type"] == "c3.small.x86"
    assert vc["nixforge_provider"] == "metal" and vc["ansible_user"] == "root"
    assert vc["nixforge_price_per_hour"] > 0 and vc["nixforge_architecture"] == "x86_64"
    for builder, hv in ((builders[0], va), (builders[2], vc)):
        assert hv["ansible_host"] == hv["nixforge_public_ipv4"]
        host_pub = (run.state_root / builder["id"] / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        assert hv["nixforge_host_public_key"] == " ".join(host_pub)
        assert Path(hv["nixforge_known_hosts_file"]).read_text() == "%s %s\n" % (hv["ansible_host"], " ".join(host_pub))
        assert "StrictHostKeyChecking=yes" in hv["ansible_ssh_common_args"]
        assert hv["ansible_ssh_private_key_file"] == str(run.state_root / builder["id"] / "id_ed25519")
    graph = run.inventory("--graph")
    assert graph.returncode == 0 and "@nixforge_expired:" in graph.stdout and "|--" + b in graph.stdout

    # A second call within the cache lifetime asks no API: counted in both emulators.
    sandbox.set_faults("ec2", {"delay": {"seconds": 0, "count": 100000}})
    metal_exchanges(env, "DELETE")
    cached = run.inventory("--list")
    assert cached.returncode == 0, cached.stderr[-3000:]
    assert plain(json.loads(cached.stdout))["_meta"]["hostvars"][a]["nixforge_id"] == va["nixforge_id"]
    assert ec2_calls_left(sandbox) == 100000
    assert metal_exchanges(env) == []
    # ... and the counters do count: a flushed cache asks both.
    assert run.inventory("--list", "--flush-cache").returncode == 0
    assert ec2_calls_left(sandbox) < 100000
    assert any("/devices" in x["path"] for x in metal_exchanges(env))
    sandbox.set_faults("ec2", {})

    # Through the inventory, with the pinned host keys (host key checking on).
    ping = run.ping("nixforge_live:&pipeline_inv_*")
    assert ping.returncode == 0, ping.stdout[-4000:] + ping.stderr[-2000:]
    assert ping.stdout.count("SUCCESS") >= 2 and a in ping.stdout and c in ping.stdout

    # A wrong pinned key is refused, not accepted.
    other = run.tmp / "other-state"
    shutil.copytree(run.state_root / builders[0]["id"], other / builders[0]["id"])
    (other / builders[0]["id"] / "ssh_host_ed25519_key.pub").unlink()
    (other / builders[0]["id"] / "known_hosts").unlink()
    keygen(run.tmp / "wrong_host_key", "wrong")
    shutil.copy(run.tmp / "wrong_host_key.pub", other / builders[0]["id"] / "ssh_host_ed25519_key.pub")
    refused = run.ping(a, "--flush-cache", state_root=other)
    assert refused.returncode != 0
    assert "UNREACHABLE" in refused.stdout and "Host key verification failed" in refused.stdout + refused.stderr
