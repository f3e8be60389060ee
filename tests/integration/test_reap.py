"""playbooks/reap.yml against every emulator of the sandbox: it finds what builds left in
the accounts (nothing of it on this controller), removes exactly the expired builds, keeps
a finished DigitalOcean image, and removes a named build whatever its expiry.

The leftovers are made directly through the providers' APIs (boto3 against moto, the
Metal and DigitalOcean APIs over HTTP, b2sdk against the B2 emulator), the way a crashed
controller would leave them. The test ends with `sandboxctl resources --json` empty of
every build it made.
"""

from __future__ import annotations

import gzip
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from _pipeline import ROOT, playbook_env, resources_of, run_playbook

sys.path.insert(0, str(ROOT / "tests" / "sandbox"))

from nfsandbox.digitalocean.testing import DOSandbox, FileServer, qcow2_image
from nfsandbox.metal.testing import MetalSandbox

pytestmark = [pytest.mark.sandbox]
PLAYBOOK = ROOT / "playbooks" / "reap.yml"
PAST = "2026-01-01T00:00:00Z"
FUTURE = "2099-01-01T00:00:00Z"
REGION = "us-east-1"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBoN5vKxV2tGmkWQ9UqgGkqpK8bo9y+3OvbKo8FGE2l4 reap-test"


def tags(build_id: str, expires_at: str) -> dict[str, str]:
    return {"nixforge-build-id": build_id, "nixforge-pipeline": "reap-test", "nixforge-expires-at": expires_at}


def ec2_leftovers(env: dict[str, str], build_id: str, expires_at: str) -> None:
    """What a self-destructed builder leaves: a security group, a key pair, a launch template."""
    ec2 = boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )

    def spec(kind: str) -> list[dict[str, Any]]:
        pairs = [{"Key": k, "Value": v} for k, v in tags(build_id, expires_at).items()]
        return [{"ResourceType": kind, "Tags": pairs}]

    ec2.create_security_group(
        GroupName="nixforge-%s-sg" % build_id, Description="reap test", TagSpecifications=spec("security-group")
    )
    ec2.import_key_pair(
        KeyName="nixforge-%s" % build_id, PublicKeyMaterial=PUBLIC_KEY.encode(), TagSpecifications=spec("key-pair")
    )
    ec2.create_launch_template(
        LaunchTemplateName="nixforge-%s-lt" % build_id,
        LaunchTemplateData={"InstanceType": "t4g.small"},
        TagSpecifications=spec("launch-template"),
    )


def metal_leftovers(metal: MetalSandbox, build_id: str, expires_at: str) -> None:
    manager = metal.manager()
    build_tags = ["%s=%s" % kv for kv in tags(build_id, expires_at).items()]
    manager.call_api(
        "projects/%s/devices" % metal.project_id,
        "POST",
        {
            "hostname": "nixforge-%s" % build_id,
            "plan": "c3.small.x86",
            "metro": "da",
            "operating_system": "debian_12",
            "billing_cycle": "hourly",
            "tags": build_tags,
        },
    )
    manager.call_api(
        "projects/%s/ssh-keys" % metal.project_id,
        "POST",
        {"label": "nixforge-%s-ssh" % build_id, "key": PUBLIC_KEY, "tags": build_tags},
    )


def b2_leftovers(env: dict[str, str], build_id: str, expires_at: str) -> None:
    """An uploaded object and a large file whose upload never finished."""
    from b2sdk.v2 import B2Api, InMemoryAccountInfo

    api = B2Api(InMemoryAccountInfo())
    api.authorize_account(env["B2_API_URL"], env["B2_APPLICATION_KEY_ID"], env["B2_APPLICATION_KEY"])
    bucket = api.get_bucket_by_name(env["NIXFORGE_SANDBOX_B2_PUBLIC_BUCKET"])
    info = tags(build_id, expires_at)
    bucket.upload_bytes(b"image bytes", "nixforge/%s/0123/nixos.img.gz" % build_id, file_info=info)
    api.session.start_large_file(bucket.id_, "nixforge/%s/4567/big.img.gz" % build_id, "application/octet-stream", info)


def do_image(do: DOSandbox, url: str, build_id: str, expires_at: str, name: str) -> dict[str, Any]:
    body = {
        "name": name,
        "url": url,
        "region": "nyc3",
        "distribution": "Unknown",
        "tags": ["%s:%s" % kv for kv in tags(build_id, expires_at).items()],
    }
    return do.post("images", body)


def do_droplet(do: DOSandbox, build_id: str, expires_at: str) -> dict[str, Any]:
    """A droplet with a build's tags, as another tool (or an older setup) leaves one."""
    body = {
        "name": "nixforge-builder-" + build_id,
        "region": "nyc3",
        "size": "s-1vcpu-1gb",
        "image": "debian-12-x64",
        "tags": ["%s:%s" % kv for kv in tags(build_id, expires_at).items()],
    }
    return do.post("droplets", body)


def droplets(build_id: str) -> list[dict[str, Any]]:
    return [r for r in resources_of(build_id) if r.get("type") == "do_droplet"]


def do_status(do: DOSandbox, image_id: Any) -> str:
    return do.manager().get_image(image_id).status


def report(stdout: str) -> dict[str, list[str]]:
    """The lines of the final report task, per provider."""
    tail = stdout[stdout.rindex("Report what was removed per provider") :]
    out: dict[str, list[str]] = {}
    current = None
    for line in tail.splitlines():
        match = re.match(r"^\s{8}(\w+):\s*(\[\])?$", line)
        if match:
            current = match.group(1)
            out[current] = []
        elif current and re.match(r"^\s{8}- ", line):
            out[current].append(line.strip()[2:])
    return out


def test_reap_finds_and_removes_expired_builds_in_every_account(env: dict[str, str], tmp_path: Path) -> None:
    run = secrets.token_hex(3)
    old_ec2, live_ec2 = "t-reap-ec2-old-" + run, "t-reap-ec2-live-" + run
    old_metal, old_b2, old_do, done_do = (
        "t-reap-metal-" + run,
        "t-reap-b2-" + run,
        "t-reap-do-" + run,
        "t-reap-done-" + run,
    )
    live_do = "t-reap-drop-live-" + run
    everything = [old_ec2, live_ec2, old_metal, old_b2, old_do, done_do, live_do]
    metal = MetalSandbox.running()
    do = DOSandbox.running()
    assert metal is not None and do is not None
    www = tmp_path / "www"
    www.mkdir()
    (www / "nixos.qcow2.gz").write_bytes(gzip.compress(qcow2_image(16 * 1024 * 1024)))
    penv = playbook_env(env)
    try:
        with FileServer(www) as files:
            ec2_leftovers(env, old_ec2, PAST)
            ec2_leftovers(env, live_ec2, FUTURE)
            metal_leftovers(metal, old_metal, PAST)
            b2_leftovers(env, old_b2, PAST)
            do.set_faults({"import_delay": 0.3})
            done = do_image(do, files.url("nixos.qcow2.gz"), done_do, PAST, "nixos-" + done_do)
            deadline = time.monotonic() + 120
            while do_status(do, done["id"]) != "available":
                assert time.monotonic() < deadline, "the finished image never became available"
                time.sleep(0.5)
            do.set_faults({"import_delay": 3600})
            stuck = do_image(do, files.url("nixos.qcow2.gz"), old_do, PAST, "nixos-" + old_do)
            old_droplet = do_droplet(do, old_do, PAST)
            do_droplet(do, live_do, FUTURE)
            assert len(droplets(old_do)) == len(droplets(live_do)) == 1
            assert do_status(do, stuck["id"]) == "NEW"

            # --check lists every expired leftover and removes nothing
            before = {b: len(resources_of(b)) for b in everything}
            checked = run_playbook(PLAYBOOK, penv, None, "--check")
            assert checked.returncode == 0, checked.stdout[-6000:]
            listed = report(checked.stdout)
            joined = {p: "\n".join(lines) for p, lines in listed.items()}
            assert {
                "%s: %s" % (old_ec2, t) in joined["ec2"] for t in ("security_group", "key_pair", "launch_template")
            } == {True}
            assert "%s: device" % old_metal in joined["metal"]
            assert "%s: ssh_key" % old_metal in joined["metal"]
            assert "%s: file_version" % old_b2 in joined["b2"]
            assert "%s: unfinished_large_file" % old_b2 in joined["b2"]
            assert "%s: image nixos-%s" % (old_do, old_do) in joined["digitalocean"]
            # (the YAML callback may fold the line before its location)
            droplet_line = "%s: droplet nixforge-builder-%s [%s]" % (old_do, old_do, old_droplet["id"])
            assert droplet_line in joined["digitalocean"]
            assert live_do not in joined["digitalocean"]
            assert live_ec2 not in checked.stdout.split("Report what was removed")[-1]
            assert done_do not in joined["digitalocean"]
            assert {b: len(resources_of(b)) for b in everything} == before

            # the real run removes exactly the expired ones, and says so per provider
            reaped = run_playbook(PLAYBOOK, penv)
            assert reaped.returncode == 0, reaped.stdout[-6000:]
            assert report(reaped.stdout) == listed
            for gone in (old_ec2, old_metal, old_b2, old_do):
                assert resources_of(gone) == [], gone
            assert resources_of(live_ec2), "a live build was reaped"
            assert len(droplets(live_do)) == 1, "a live droplet was reaped"
            assert do_status(do, done["id"]) == "available"

            # a named build goes whatever its expiry, its finished image too
            for named in (live_ec2, done_do, live_do):
                proc = run_playbook(PLAYBOOK, penv, {"nixforge_build_id": named})
                assert proc.returncode == 0, proc.stdout[-6000:]
                assert any(named in line for lines in report(proc.stdout).values() for line in lines)
                assert resources_of(named) == [], named
    finally:
        do.set_faults({})
        for build_id in everything:  # whatever an assertion left behind
            if resources_of(build_id):
                run_playbook(PLAYBOOK, penv, {"nixforge_build_id": build_id})
    for build_id in everything:
        assert resources_of(build_id) == [], build_id


def test_a_removal_that_fails_does_not_stop_the_others(env: dict[str, str], tmp_path: Path) -> None:
    """A DigitalOcean droplet that cannot be deleted (every DELETE answered 500): the expired EC2
    build is still removed, the play fails at the end naming what is left, and a second run,
    once DigitalOcean answers again, removes it."""
    run = secrets.token_hex(3)
    old_ec2, old_do = "t-reap-go-ec2-" + run, "t-reap-go-do-" + run
    do = DOSandbox.running()
    assert do is not None
    penv = playbook_env(env)
    try:
        ec2_leftovers(env, old_ec2, PAST)
        do_droplet(do, old_do, PAST)
        do.set_faults({"routes": {"^DELETE /v2/droplets": {"server_error_rate": 1.0}}})
        proc = run_playbook(PLAYBOOK, penv, {"nixforge_reap_providers": ["ec2", "digitalocean"]})
        assert proc.returncode != 0, proc.stdout[-6000:]
        text = " ".join(proc.stdout.split())
        assert "Could not remove everything: digitalocean droplets %s:" % old_do in text, proc.stdout[-6000:]
        assert resources_of(old_ec2) == []  # removed although the droplet's removal failed
        assert len(droplets(old_do)) == 1
        do.set_faults({})
        again = run_playbook(PLAYBOOK, penv, {"nixforge_reap_providers": ["ec2", "digitalocean"]})
        assert again.returncode == 0, again.stdout[-6000:]
        assert droplets(old_do) == []
    finally:
        do.set_faults({})
        for build_id in (old_ec2, old_do):
            if resources_of(build_id):
                run_playbook(PLAYBOOK, penv, {"nixforge_build_id": build_id})
    assert resources_of(old_ec2) == [] and resources_of(old_do) == []
