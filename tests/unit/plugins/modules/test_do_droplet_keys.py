"""do_ssh_key and do_droplet (state present) against the DigitalOcean emulator in-process.

Public images (a slug) need no QEMU: the emulator makes such a droplet active by the clock,
with an address of the documentation range. Booting a custom image is the integration
tests' part (tests/integration/test_playbook_do.py boots the built image,
tests/integration/test_boot_check.py one that never boots).
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.nixforge.images.plugins.module_utils._base._retry import RetryPolicy
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean import _client as do_utils
from ansible_collections.nixforge.images.plugins.modules import do_droplet, do_ssh_key

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "sandbox"))
from nfsandbox.digitalocean.api import DigitalOceanAPI
from nfsandbox.digitalocean.http import DigitalOceanHTTPServer
from nfsandbox.tls import CertificateAuthority


class Emulator:
    def __init__(self, api: DigitalOceanAPI) -> None:
        self.api = api
        self.url = api.base_url + "/v2/"


@pytest.fixture
def do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in ("DIGITALOCEAN_TOKEN", "DO_API_TOKEN", "DIGITALOCEAN_API_URL", "DIGITALOCEAN_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    api = DigitalOceanAPI(work_dir=tmp_path / "work")
    ca = CertificateAuthority(tmp_path)
    server = DigitalOceanHTTPServer(api, ca.server_context("127.0.0.1"))
    server.start()
    # HTTPS only: the modules trust the emulator through their ca_bundle fallback
    monkeypatch.setenv("DIGITALOCEAN_CA_BUNDLE", str(ca.ca_cert))
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.setattr(do_utils, "DEFAULT_POLICY", RetryPolicy(max_attempts=8, base_delay=0.01, max_delay=0.05))
    yield Emulator(api)
    server.stop()
    api.shutdown()


class _Exit(Exception):
    def __init__(self, kind: str, result: dict[str, Any]) -> None:
        super().__init__(kind)
        self.kind, self.result = kind, result


@pytest.fixture(autouse=True)
def exits(monkeypatch: pytest.MonkeyPatch) -> None:
    from ansible.module_utils import basic

    def exit_json(self: Any, **kwargs: Any) -> None:
        raise _Exit("exit", json.loads(json.dumps(basic.remove_values(kwargs, self.no_log_values))))

    def fail_json(self: Any, msg: str, **kwargs: Any) -> None:
        kwargs.update(msg=msg, failed=True)
        raise _Exit("fail", json.loads(json.dumps(basic.remove_values(kwargs, self.no_log_values))))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)


def run(do: Emulator, cls: Any, check: bool = False, **args: Any) -> _Exit:
    base = {"build_id": "b1", "ttl": "1h", "api_url": do.url, "oauth_token": do.api.token}
    base.update(args)
    base = {k: v for k, v in base.items() if v is not None}
    if check:
        base["_ansible_check_mode"] = True
    with patch_module_args(base):
        with pytest.raises(_Exit) as info:
            cls().execute()
    return info.value


@pytest.fixture(scope="module")
def public_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("keys") / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)], check=True)
    return Path(str(path) + ".pub").read_text().strip()


def listed_keys(do: Emulator) -> list[str]:
    out = run(do, do_ssh_key.DoSshKey, check=True, state="absent")
    return [k["name"] for k in out.result["removed"]]


def test_ssh_key_present_is_idempotent_and_absent_removes_it(do: Emulator, public_key: str) -> None:
    planned = run(do, do_ssh_key.DoSshKey, check=True, public_key=public_key)
    assert planned.kind == "exit" and planned.result["changed"] and planned.result["ssh_key"]["id"] is None
    assert listed_keys(do) == []  # check mode registered nothing
    moment = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)).replace(microsecond=0)
    expires_at = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    made = run(do, do_ssh_key.DoSshKey, public_key=public_key, ttl=None, expires_at=expires_at)
    assert made.kind == "exit", made.result
    key = made.result["ssh_key"]
    assert made.result["changed"] and made.result["created"]
    assert key["name"] == "nixforge-b1-" + moment.strftime("%Y%m%dT%H%M%SZ") and key["build_id"] == "b1"
    assert key["expires_at"] == expires_at and key["fingerprint"]
    again = run(do, do_ssh_key.DoSshKey, public_key=public_key)
    assert not again.result["changed"] and again.result["ssh_key"]["id"] == key["id"]
    gone = run(do, do_ssh_key.DoSshKey, state="absent")
    assert gone.result["removed"] == [{"id": key["id"], "name": key["name"]}]
    assert run(do, do_ssh_key.DoSshKey, state="absent").result["changed"] is False


def test_ssh_key_refuses_a_private_key_without_echoing_it(do: Emulator) -> None:
    out = run(do, do_ssh_key.DoSshKey, public_key="-----BEGIN OPENSSH PRIVATE KEY-----\nsecretstuff\n")
    assert out.kind == "fail" and "public_key" in out.result["msg"] and "secretstuff" not in json.dumps(out.result)


def droplet_args(**extra: Any) -> dict[str, Any]:
    args = {"state": "present", "name": "nixforge-b1-boot", "region": "nyc3", "image": "debian-12-x64"}
    args.update(min_disk_size=10, wait_timeout=60, user_data="#cloud-config\nssh_keys: {}\n")
    args.update(extra)
    return args


def test_droplet_present_takes_the_cheapest_fitting_size_waits_and_adopts(do: Emulator, public_key: str) -> None:
    key = run(do, do_ssh_key.DoSshKey, public_key=public_key).result["ssh_key"]
    planned = run(do, do_droplet.DoDroplet, check=True, **droplet_args(ssh_keys=[key["id"]]))
    assert planned.result["changed"] and planned.result["droplet"]["size"] == "s-1vcpu-512mb-10gb"
    out = run(do, do_droplet.DoDroplet, **droplet_args(ssh_keys=[key["id"]], tags={"team": "ops"}))
    assert out.kind == "exit", out.result
    droplet = out.result["droplet"]
    assert out.result["created"] and droplet["status"] == "active" and droplet["public_ipv4"]
    assert droplet["size"] == "s-1vcpu-512mb-10gb" and droplet["price_hourly"] > 0
    assert {"nixforge-build-id:b1", "nixforge-pipeline:default", "team:ops"} <= set(droplet["tags"])
    assert any(t.startswith("nixforge-expires-at:") for t in droplet["tags"])
    again = run(do, do_droplet.DoDroplet, **droplet_args(min_disk_size=20))
    assert not again.result["changed"] and again.result["droplet"]["id"] == droplet["id"]
    other = run(do, do_droplet.DoDroplet, check=True, **droplet_args(name="other", min_disk_size=20))
    assert other.result["droplet"]["size"] == "s-1vcpu-1gb"  # 25 GB: the cheapest with 20 GB or more
    gone = run(do, do_droplet.DoDroplet, state="absent", name="nixforge-b1-boot")
    assert [d["id"] for d in gone.result["removed"]] == [droplet["id"]]
    assert run(do, do_droplet.DoDroplet, state="absent").result["removed"] == []


def test_droplet_user_data_is_never_returned(do: Emulator) -> None:
    out = run(do, do_droplet.DoDroplet, **droplet_args(user_data="#cloud-config\n# very-secret-host-key\n"))
    assert out.kind == "exit", out.result
    assert "very-secret-host-key" not in json.dumps(out.result)
    run(do, do_droplet.DoDroplet, state="absent")


def test_droplet_with_a_size_that_does_not_exist_fails_naming_size(do: Emulator) -> None:
    out = run(do, do_droplet.DoDroplet, **droplet_args(size="s-99vcpu"))
    assert out.kind == "fail" and "size" in out.result["msg"]
    assert run(do, do_droplet.DoDroplet, state="absent").result["removed"] == []
