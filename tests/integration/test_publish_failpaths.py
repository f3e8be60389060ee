"""do_image_publish's failure paths through its role entry point, in the sandbox: an import
DigitalOcean refuses and an import that outlasts do_image_publish_wait_timeout. The role stops
with the composed reason (what was removed, what to raise), removes the B2 object and the
image, and leaves do_image_publish_result undefined.

The image is in B2 already, as the builder_upload entry point leaves it (do_image_publish_object),
so that the controller's own check of the file (the path of test_playbook_do.py's refused image)
does not stop it before DigitalOcean sees it.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from _pipeline import INVENTORY, resources_of, set_faults
from nfsandbox.testing import ansible_env, ansible_playbook, sandbox_missing

pytestmark = [pytest.mark.sandbox]


def failing_play(workdir: Path, build_id: str, bucket: str, extra: dict[str, Any]) -> Path:
    upload = {"bucket": bucket, "build_id": build_id, "ttl": "1h"}
    publish = {
        "name": "Publish",
        "ansible.builtin.include_role": {"name": "nixforge.images.do_image_publish"},
        "vars": {
            "do_image_publish_build_id": build_id,
            "do_image_publish_bucket": bucket,
            "do_image_publish_object": "{{ uploaded.object | combine({'url': uploaded.url}) }}",
            "do_image_publish_boot_check": False,
            **extra,
        },
    }
    record = {
        "ansible.builtin.copy": {
            "dest": str(workdir / "outcome.json"),
            "content": "{{ {'msg': ansible_failed_result.msg,"
            " 'result': do_image_publish_result is defined} | to_json }}",
            "mode": "0600",
        }
    }
    play = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                # not an image: DigitalOcean fetches it and refuses its format
                {
                    "nixforge.images.b2_object": {**upload, "src": str(workdir / "nixos.qcow2.gz")},
                    "register": "uploaded",
                },
                {"block": [publish], "rescue": [record]},
            ],
        }
    ]
    path = workdir / "publish.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    return path


CASES = {
    "refused": ({}, {}, "Import into DigitalOcean: ", "We don't support the format"),
    "timeout": (
        {"do_image_publish_wait_timeout": 3},
        {"import_delay": 60},
        "Import into DigitalOcean: ",
        "(do_image_publish_wait_timeout is 3 s; raise it for a slow import.)",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_failed_import_stops_with_the_reason_and_leaves_nothing(env, tmp_path: Path, case: str) -> None:
    if "B2_API_URL" not in env or "DIGITALOCEAN_TOKEN" not in env:
        sandbox_missing("the sandbox has no B2 or DigitalOcean emulator")
    extra, faults, step, reason = CASES[case]
    build_id = "t-pf-" + os.urandom(3).hex()
    (tmp_path / "nixos.qcow2.gz").write_bytes(gzip.compress(os.urandom(64 * 1024)))
    playbook = failing_play(tmp_path, build_id, env["NIXFORGE_SANDBOX_B2_PUBLIC_BUCKET"], extra)
    set_faults(env, "digitalocean", faults)
    try:
        proc = ansible_playbook(["-i", str(INVENTORY), str(playbook)], ansible_env(tmp_path, env), timeout=600)
    finally:
        set_faults(env, "digitalocean", {})
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]  # the play's rescue caught the role
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    message = outcome["msg"]
    assert message.startswith(
        "Publishing nixos.qcow2.gz as DigitalOcean image nixos-%s failed; the B2 object and the image were removed. %s"
        % (build_id, step)
    ), message
    assert reason in message, message
    assert outcome["result"] is False  # no do_image_publish_result after a failure
    assert resources_of(build_id) == []  # neither the B2 object nor the image
