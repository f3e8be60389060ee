"""The DigitalOcean publishing step on B2's large-file path, with a lost finish answer.

do_image_publish runs through its role entry point (as build-do-image.yml's publish play
runs it) with the sandbox inventory and `sandboxctl env`: the pipelines' least-privilege
B2 key, HTTPS with the sandbox CA, the DigitalOcean emulator fetching the B2 URL. The
image is a qcow2.gz-shaped file over two 5 MB parts (three parts: start, parts in
parallel, finish with the part SHA-1 array), and the emulator carries out the
`b2_finish_large_file` but loses its answer: the upload must be counted as done (not
deleted and not uploaded again), imported with the exact bytes, and its object removed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from _pipeline import INVENTORY, resources_of, set_faults
from nfsandbox.digitalocean.testing import DOSandbox, qcow2_image
from nfsandbox.testing import ansible_env, ansible_playbook, sandbox_missing

pytestmark = [pytest.mark.sandbox, pytest.mark.spread]
MB = 1000 * 1000
PART = 5 * MB


def qcow2_gz(path: Path, size: int) -> str:
    """A gzip of a qcow2 whose data does not compress (so the file is `size` bytes or a bit more)."""
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(qcow2_image(1024**3))
        out.write(os.urandom(size))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish_play(workdir: Path, artifact: Path, build_id: str, bucket: str) -> Path:
    play = [
        {
            "name": "Publish through B2's large-file path",
            "hosts": "localhost",
            "gather_facts": False,
            # the part size the sandbox inventory sets (whatever the role's variable is named here)
            "module_defaults": {"nixforge.images.b2_object": {"part_size": "5MB"}},
            "tasks": [
                {
                    "name": "Publish",
                    "ansible.builtin.include_role": {"name": "nixforge.images.do_image_publish"},
                    "vars": {
                        "do_image_publish_artifact": str(artifact),
                        "do_image_publish_build_id": build_id,
                        "do_image_publish_bucket": bucket,
                        "do_image_publish_part_size": "5MB",
                        # a synthetic image: nothing to boot (the boot check has its own tests)
                        "do_image_publish_boot_check": False,
                    },
                },
                {
                    "name": "Write the result",
                    "ansible.builtin.copy": {
                        "dest": str(workdir / "result.json"),
                        "content": "{{ do_image_publish_result | to_json }}",
                        "mode": "0600",
                    },
                },
            ],
        }
    ]
    path = workdir / "publish.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    return path


def test_a_lost_finish_answer_on_the_large_file_path_of_a_pipeline_run(env, sandbox, tmp_path):
    if "B2_API_URL" not in env or "DIGITALOCEAN_TOKEN" not in env:
        sandbox_missing("the sandbox has no B2 or DigitalOcean emulator")
    build_id = "t-mp-" + os.urandom(3).hex()
    artifact = tmp_path / "nixos.qcow2.gz"
    digest = qcow2_gz(artifact, 2 * PART + 1 * MB)
    assert artifact.stat().st_size > 2 * PART  # three parts of 5 MB at most
    playbook = publish_play(tmp_path, artifact, build_id, env["NIXFORGE_SANDBOX_B2_PUBLIC_BUCKET"])
    set_faults(env, "b2", {"lost_answer": 1, "lost_answer_match": "^b2_finish_large_file$"})
    image_id = None
    try:
        proc = ansible_playbook(["-i", str(INVENTORY), str(playbook)], ansible_env(tmp_path, env), timeout=900)
        served = sandbox.call("GET", "/faults/b2")["faults"]["served"]
        result = json.loads((tmp_path / "result.json").read_text()) if (tmp_path / "result.json").exists() else {}
        image_id = result.get("image_id")
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        # B2 finished the file and the answer was lost: found, kept, imported, not uploaded twice
        assert served["calls"].get("b2_finish_large_file") == {"lost_answer": 1}, served
        assert "did not answer the finish" in proc.stdout + proc.stderr
        assert re.search(r"in parts of 5000000 bytes", proc.stdout) or artifact.stat().st_size > 2 * PART
        assert result["imported"] in (True, "True") and result["object_removed"] in (True, "True"), result
        assert result["sha256"] == digest
        do = DOSandbox.state_of(sandbox.instance.number)[0]
        [imported] = [r for r in DOSandbox(do).do_resources() if str(r.get("id")) == str(image_id)]
        assert imported["sha256"] == digest  # DigitalOcean fetched exactly the uploaded bytes
        assert [r for r in resources_of(build_id) if r.get("provider") == "b2"] == []
    finally:
        set_faults(env, "b2", {})
        if image_id is not None:
            remove_image(tmp_path, env, build_id)
    assert resources_of(build_id) == []


def remove_image(tmp_path: Path, env: dict[str, Any], build_id: str) -> None:
    """The pipeline's product (a user keeps it): removed through the module, by build id."""
    play = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {
                    "nixforge.images.do_custom_image": {
                        "state": "absent",
                        "name": "nixos-" + build_id,
                        "build_id": build_id,
                    }
                }
            ],
        }
    ]
    path = tmp_path / "remove.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    proc = ansible_playbook(["-i", str(INVENTORY), str(path)], ansible_env(tmp_path, env), timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
