"""Unit tests of metal_device and module_utils/_metal/_client.py.

The Metal API here is the sandbox emulator's state machine (tests/sandbox/nfsandbox/
metal/api.py) served in-process through `responses`, with hosts stubbed out: packet-python
runs its real request code, the module runs its real logic, no network and no root needed.
The real HTTPS emulator with real hosts is exercised by tests/integration/test_metal_device.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
import yaml
from ansible.module_utils.testing import patch_module_args
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._retry import RetryPolicy
from ansible_collections.nixforge.images.plugins.module_utils._base._sshkeys import validate_host_key
from ansible_collections.nixforge.images.plugins.module_utils._metal import _catalogue as _metal_catalogue
from ansible_collections.nixforge.images.plugins.module_utils._metal import _client as metal
from ansible_collections.nixforge.images.plugins.module_utils._metal import _userdata as _metal_userdata
from ansible_collections.nixforge.images.plugins.modules import metal_device

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "sandbox"))
from nfsandbox.metal.api import MetalAPI

TOKEN = "unit-token-5b1f0c2e9d"
HOST_PRIVATE = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACCi1dhhRcp/IgUP+weidJoHT3xzHziIjlf8aOeuxFX3jwAAAIgtpa2fLaWt
nwAAAAtzc2gtZWQyNTUxOQAAACCi1dhhRcp/IgUP+weidJoHT3xzHziIjlf8aOeuxFX3jw
AAAEDn5tA6xNZkfTo/RER4jzn4l9sp/NGE833Fs6mW6dS5SaLV2GFFyn8iBQ/7B6J0mgdP
fHMfOIiOV/xo567EVfePAAAABGhvc3QB
-----END OPENSSH PRIVATE KEY-----
"""
HOST_PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKLV2GFFyn8iBQ/7B6J0mgdPfHMfOIiOV/xo567EVfeP host"
USER_PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOWMetpWakesAGI8G780M1J2TV/jWtcoqPQSzLKo5Yev nixforge-b1"
OTHER_PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKLV2GFFyn8iBQ/7B6J0mgdPfHMfOIiOV/xo567EVfeP other"
HOST_KEY = validate_host_key(HOST_PRIVATE, HOST_PUBLIC)


# -- an in-process Metal API ---------------------------------------------------------


class _Host:
    name = "stub-host"
    ip = "192.0.2.10"


class _Backend:
    """Hosts are out of scope here: a device "boots" at once on a fixed address."""

    def __init__(self):
        self.running = 0

    def boot(self, device, on_poweroff):
        self.running += 1
        return _Host()

    def stop(self, handle):
        self.running -= 1

    def network(self, handle):
        return "192.0.2.1", 24


@pytest.fixture
def api(monkeypatch):
    backend = _Backend()
    emulator = MetalAPI(backend, token=TOKEN, queued_delay=0.0)
    fast = {"provision_delay": 0, "deprovision_delay": 0}
    emulator.set_faults(fast)
    emulator.fast = fast
    emulator.backend_stub = backend
    # Short retry sleeps: the policy is the same, only faster.
    monkeypatch.setattr(metal, "DEFAULT_POLICY", RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05))

    def callback(request):
        parts = urlsplit(request.url)
        path = parts.path
        status, body, headers = emulator.handle(
            request.method, path, parse_qs(parts.query, keep_blank_values=True), request.headers, request.body or b""
        )
        headers = dict(headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        return status, headers, json.dumps(body) if body is not None else ""

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        for method in ("GET", "POST", "DELETE", "PUT", "PATCH"):
            mock.add_callback(method, re.compile(r"https://metal\.test/.*"), callback=callback)
        yield emulator
    emulator.shutdown()


class _Exit(Exception):
    def __init__(self, kind, result):
        super().__init__(kind)
        self.kind = kind
        self.result = result


@pytest.fixture
def exits(monkeypatch):
    from ansible.module_utils import basic

    def exit_json(self, **kwargs):
        raise _Exit("exit", json.loads(json.dumps(basic.remove_values(kwargs, self.no_log_values))))

    def fail_json(self, msg, **kwargs):
        kwargs["msg"] = msg
        kwargs["failed"] = True
        raise _Exit("fail", json.loads(json.dumps(basic.remove_values(kwargs, self.no_log_values))))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)


def run(api, **args):
    base = {
        "build_id": "b1",
        "ttl": "1h",
        "api_url": "https://metal.test/metal/v1",
        "auth_token": TOKEN,
        "project_id": api.default_project_id,
        "plan": "c3.small.x86",
        "metro": "da",
        "public_key": USER_PUBLIC,
        "host_key_private": HOST_PRIVATE,
        "host_key_public": HOST_PUBLIC,
        "wait_timeout": 30,
    }
    base.update(args)
    base = {k: v for k, v in base.items() if v is not None}
    with patch_module_args(base):
        with pytest.raises(_Exit) as info:
            metal_device.MetalDevice().execute()
    return info.value


def kinds(api):
    return sorted(r["type"] for r in api.resources())


# -- module: the happy paths -----------------------------------------------------------


def test_present_creates_device_and_key_then_adopts(api, exits):
    out = run(api)
    assert out.kind == "exit", out.result
    assert out.result["changed"] is True
    assert out.result["adopted"] is False
    dev = out.result["device"]
    assert dev["state"] == "active"
    assert dev["public_ipv4"] == "192.0.2.10"
    assert dev["private_ipv4"].startswith("10.")
    assert dev["plan"] == "c3.small.x86" and dev["metro"] == "da" and dev["facility"] == "da11"
    assert dev["architecture"] == "x86_64" and dev["kvm"] is True
    assert dev["ssh_user"] == "root"
    assert dev["host_public_key"] == HOST_PUBLIC
    assert dev["price_per_hour"] == 0.75
    assert dev["tags"]["nixforge-build-id"] == "b1"
    assert dev["termination_time"] == out.result["build"]["expires_at"]
    assert kinds(api) == ["device", "ssh_key"]

    stored = next(d for d in api.devices.values())
    assert stored.termination_time is not None
    assert "nixforge-build-id=b1" in stored.tags
    assert stored.authorized_keys == [USER_PUBLIC]
    config = yaml.safe_load(stored.userdata)
    assert config["ssh_keys"]["ed25519_private"] == HOST_PRIVATE
    assert stored.userdata.startswith("#cloud-config\n")
    # The user data carries the private key: it is never returned.
    assert "PRIVATE KEY" not in json.dumps(out.result)

    again = run(api)
    assert again.kind == "exit"
    assert again.result["changed"] is False
    assert again.result["adopted"] is True
    assert again.result["device"]["id"] == dev["id"]
    assert kinds(api) == ["device", "ssh_key"]


def test_absent_removes_everything_and_is_idempotent(api, exits):
    run(api)
    out = run(api, state="absent")
    assert out.kind == "exit", out.result
    assert out.result["changed"] is True
    assert len(out.result["removed"]["devices"]) == 1
    assert len(out.result["removed"]["ssh_keys"]) == 1
    assert api.resources() == []
    assert api.backend_stub.running == 0
    out = run(api, state="absent")
    assert out.result["changed"] is False


def test_check_mode_creates_nothing(api, exits):
    out = run(api, _ansible_check_mode=True)
    assert out.kind == "exit", out.result
    assert out.result["changed"] is True
    assert any(a.startswith("create device nixforge-b1 (c3.small.x86 in da") for a in out.result["actions"])
    assert any(a.startswith("create project SSH key") for a in out.result["actions"])
    assert api.resources() == []
    run(api)
    out = run(api, state="absent", _ansible_check_mode=True)
    assert out.result["changed"] is True
    assert kinds(api) == ["device", "ssh_key"]


def test_check_mode_and_real_run_report_the_same_actions(api, exits):
    """The plan check mode reports is, text for text, what a real run then does."""
    api.set_faults({**api.fast, "fail_provisioning": 1})
    assert run(api, wait=False).kind == "exit"  # leaves a device that fails: replaced below
    deadline = time.time() + 10
    while time.time() < deadline and [d.state for d in api.devices.values()] != ["failed"]:
        time.sleep(0.05)
    for args in ({}, {"state": "absent"}):
        check = run(api, _ansible_check_mode=True, **args)
        real = run(api, **args)
        assert check.kind == real.kind == "exit", (check.result, real.result)
        assert check.result["changed"] is True and real.result["changed"] is True
        assert check.result["actions"] == real.result["actions"]
    assert check.result["actions"][0].startswith("delete device ")
    assert api.resources() == []


def test_spot_and_facility_and_nixos(api, exits):
    out = run(
        api,
        facility="sv15",
        metro=None,
        plan="c3.large.arm64",
        operating_system="nixos_23_11",
        spot_instance=True,
        max_price=1.25,
        user_data="{ pkgs, ... }: { environment.systemPackages = [ pkgs.git ]; }",
    )
    assert out.kind == "exit", out.result
    dev = out.result["device"]
    assert dev["metro"] == "sv" and dev["facility"] == "sv15"
    assert dev["architecture"] == "aarch64"
    assert dev["spot_instance"] is True and dev["spot_price_max"] == 1.25 and dev["price_per_hour"] == 1.25
    stored = next(d for d in api.devices.values())
    assert stored.spot_instance and stored.operating_system == "nixos_23_11"
    assert "nix.settings.trusted-users" in stored.userdata
    assert '"kvm"' in stored.userdata and "environment.systemPackages" in stored.userdata


def test_spot_default_bid_is_the_on_demand_price(api, exits):
    out = run(api, spot_instance=True)
    assert out.result["device"]["spot_price_max"] == 0.75


# -- module: bad input fails before anything is created ---------------------------------


@pytest.mark.parametrize(
    ("args", "parameter", "text"),
    [
        ({"plan": "c9.huge.x86"}, "plan", "Valid plans: c3.large.arm64, c3.small.x86"),
        ({"metro": "zz"}, "metro", "Valid metros: am, da, fr, ny, sv"),
        ({"metro": None, "facility": "xx1"}, "facility", "Valid facilities"),
        ({"metro": "da", "facility": "sv15"}, "facility", "not da"),
        ({"operating_system": "windows_2022"}, "operating_system", "debian_12"),
        ({"plan": "c3.large.arm64", "operating_system": "nixos_22_11"}, "operating_system", "cannot be installed"),
        ({"plan": "c3.large.arm64", "metro": "ny"}, "metro", "Metros offering c3.large.arm64: da, sv"),
        ({"plan": "s3.xlarge.x86", "require_kvm": True}, "plan", "Pick a plan with KVM in da: c3.large.arm64"),
        ({"spot_instance": True, "max_price": 0.01}, "max_price", "at least"),
        ({"max_price": 0.5}, "max_price", "spot_instance"),
        ({"auth_token": "wrong-token"}, "auth_token", "METAL_AUTH_TOKEN"),
        ({"project_id": "not-a-uuid"}, "project_id", "UUID"),
        ({"project_id": "00000000-0000-0000-0000-000000000000"}, "project_id", "no project 00000000"),
        ({"public_key": "hello"}, "public_key", "OpenSSH"),
        ({"host_key_public": None}, "host_key_public", "go together"),
        ({"host_key_private": "not a key"}, "host_key_private", "private key"),
        ({"user_data": "#!/bin/sh\necho hi\n"}, "user_data", "runcmd"),
        ({"api_url": "http://metal.test/metal/v1"}, "api_url", "https"),
    ],
)
def test_bad_input_fails_naming_the_parameter(api, exits, args, parameter, text):
    out = run(api, **args)
    assert out.kind == "fail", out.result
    assert out.result["parameter"] == parameter, out.result["msg"]
    assert out.result["msg"].startswith("Parameter '%s' failed" % parameter) or parameter in out.result["msg"]
    assert text in out.result["msg"]
    assert api.resources() == []
    assert "Traceback" not in out.result["msg"]


def test_absent_with_a_wrong_project_or_token_names_the_parameter(api, exits):
    out = run(api, state="absent", project_id="00000000-0000-0000-0000-000000000000")
    assert out.kind == "fail" and out.result["parameter"] == "project_id"
    out = run(api, state="absent", auth_token="nope")
    assert out.kind == "fail" and out.result["parameter"] == "auth_token"


def test_missing_token_and_project(api, exits, monkeypatch):
    for name in ("METAL_AUTH_TOKEN", "PACKET_AUTH_TOKEN", "METAL_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)
    out = run(api, auth_token=None)
    assert out.result["parameter"] == "auth_token"
    assert "METAL_AUTH_TOKEN" in out.result["msg"]
    out = run(api, project_id=None)
    assert out.result["parameter"] == "project_id"


def test_token_from_environment(api, exits, monkeypatch):
    monkeypatch.setenv("PACKET_AUTH_TOKEN", TOKEN)
    monkeypatch.delenv("METAL_AUTH_TOKEN", raising=False)
    out = run(api, auth_token=None)
    assert out.kind == "exit", out.result


def test_no_secret_in_failure_output(api, exits):
    out = run(api, plan="nope")
    text = json.dumps(out.result)
    assert TOKEN not in text
    assert "PRIVATE KEY-----\nb3Bl" not in text and "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ" not in text


# -- module: provider failures ------------------------------------------------------------


def test_failed_provisioning_cleans_up(api, exits):
    api.set_faults({**api.fast, "fail_provisioning": 1})
    out = run(api)
    assert out.kind == "fail"
    assert "Provisioning the device failed" in out.result["msg"]
    assert "state 'failed'" in out.result["msg"]
    assert "nothing is left behind" in out.result["msg"]
    assert out.result["changed"] is True
    assert api.resources() == []
    # A second run starts afresh and succeeds.
    out = run(api)
    assert out.kind == "exit", out.result
    assert out.result["adopted"] is False


def test_leftover_failed_device_is_replaced(api, exits):
    api.set_faults({**api.fast, "fail_provisioning": 1})
    out = run(api, wait=False)
    assert out.result["device"]["state"] in ("queued", "provisioning")
    deadline = time.time() + 10
    while time.time() < deadline and [d.state for d in api.devices.values()] != ["failed"]:
        time.sleep(0.05)
    assert [d.state for d in api.devices.values()] == ["failed"]
    out = run(api)
    assert "delete failed device" in out.result["actions"][0]
    assert out.kind == "exit", out.result
    states = sorted(d.state for d in api.devices.values())
    assert states == ["active"], states


def test_wait_timeout_cleans_up(api, exits):
    api.set_faults({"deprovision_delay": 0, "provision_delay": 5})
    out = run(api, wait_timeout=1)
    assert out.kind == "fail"
    assert "wait_timeout" in out.result["msg"]
    assert "nothing is left behind" in out.result["msg"]
    assert api.resources() == []


def test_throttling_and_server_errors_are_retried(api, exits):
    api.set_faults({**api.fast, "throttle": 3})
    out = run(api)
    assert out.kind == "exit", out.result
    run(api, state="absent")
    api.set_faults({**api.fast, "server_error": 2, "server_error_match": "^POST /projects/[^/]+/devices$"})
    out = run(api)
    assert out.kind == "exit", out.result
    assert kinds(api) == ["device", "ssh_key"]


def test_retries_give_up_with_a_clear_message(api, exits):
    api.set_faults({**api.fast, "server_error": 100, "server_error_status": 503})
    out = run(api)
    assert out.kind == "fail"
    assert "HTTP 503" in out.result["msg"]
    assert "try again later" in out.result["msg"]
    api.set_faults({**api.fast, "server_error": 0})
    assert api.resources() == []


def test_lost_create_reply_does_not_create_twice(api, exits, monkeypatch):
    """A 5xx after the device was created: the retry finds it by tag instead of creating a second one."""
    original = api._create_device
    calls = []

    def create_then_fail(query, body, project_id):
        result = original(query, body, project_id)
        calls.append(1)
        if len(calls) == 1:
            from nfsandbox.metal.api import ApiError

            raise ApiError(502, "Bad gateway")
        return result

    monkeypatch.setattr(api, "_create_device", create_then_fail)
    out = run(api)
    assert out.kind == "exit", out.result
    assert len(calls) == 1
    assert kinds(api) == ["device", "ssh_key"]


def test_key_already_in_project_is_used_and_left_alone(api, exits, monkeypatch):
    from ansible_collections.nixforge.images.plugins.module_utils._base._module import NixforgeModule

    warned: list = []
    monkeypatch.setattr(NixforgeModule, "warn", lambda self, msg: warned.append(msg))
    api.handle(
        "POST",
        "/projects/%s/ssh-keys" % api.default_project_id,
        {},
        {"X-Auth-Token": TOKEN},
        json.dumps({"label": "alice", "key": USER_PUBLIC}).encode(),
    )
    out = run(api)
    assert out.kind == "exit", out.result
    assert any("already the project's SSH key" in w for w in warned), warned
    run(api, state="absent")
    assert [(r["type"], r["name"]) for r in api.resources()] == [("ssh_key", "alice")]


def test_other_key_for_existing_device_is_refused(api, exits):
    run(api)
    out = run(api, public_key=OTHER_PUBLIC)
    assert out.kind == "fail"
    assert out.result["parameter"] == "public_key"


def test_two_devices_of_one_build_fail_clearly(api, exits):
    run(api)
    assert run(api, build_id="b2", public_key=OTHER_PUBLIC).kind == "exit"
    for dev in api.devices.values():
        dev.tags = [t.replace("=b2", "=b1") for t in dev.tags]
    out = run(api)
    assert out.kind == "fail"
    assert "state: absent" in out.result["msg"]


def test_termination_time_removes_the_device(api, exits):
    out = run(api, expires_at=None, ttl="3s")
    assert out.kind == "exit", out.result
    deadline = time.time() + 10
    while time.time() < deadline and any(r["type"] == "device" for r in api.resources()):
        time.sleep(0.2)
    assert [r["type"] for r in api.resources()] == ["ssh_key"]
    out = run(api, state="absent")
    assert api.resources() == []


# -- module_utils ---------------------------------------------------------------------


def test_tags_round_trip():
    tags = {"nixforge-build-id": "b1", "nixforge-expires-at": "2026-11-22T18:00:00Z", "team": ""}
    assert metal.tag_list(tags) == ["nixforge-build-id=b1", "nixforge-expires-at=2026-11-22T18:00:00Z", "team="]
    assert metal.tag_dict(metal.tag_list(tags)) == tags
    assert metal.tag_dict(["plain"]) == {"plain": ""}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "api.equinix.com/metal/v1"),
        ("https://api.equinix.com/metal/v1/", "api.equinix.com/metal/v1"),
        ("127.0.0.1:20063", "127.0.0.1:20063"),
        ("metal.example.com:8443/metal/v1", "metal.example.com:8443/metal/v1"),
    ],
)
def test_normalize_api_url(value, expected):
    assert metal.normalize_api_url(value) == expected


@pytest.mark.parametrize("value", ["http://x/metal/v1", "https://", "a b", "ftp://x"])
def test_normalize_api_url_rejects(value):
    with pytest.raises(UserInputError) as info:
        metal.normalize_api_url(value)
    assert info.value.parameter == "api_url"


def test_cloud_config_merges_user_config():
    text = _metal_userdata.render_cloud_config(
        "b1",
        HOST_KEY,
        [USER_PUBLIC],
        "#cloud-config\nruncmd:\n  - echo hi\nssh_authorized_keys: [k1]\n",
    )
    config = yaml.safe_load(text)
    assert config["runcmd"] == ["echo hi"]
    # one rule for every provider: the module's entries first, then the user's
    assert config["ssh_authorized_keys"] == [USER_PUBLIC, "k1"]
    assert config["disable_root"] is False
    assert config["ssh_keys"] == {"ed25519_private": HOST_PRIVATE, "ed25519_public": HOST_PUBLIC}
    assert config["ssh_genkeytypes"] == [] and config["ssh_deletekeys"] is True
    assert "ed25519_private: |\n" in text


def test_cloud_config_rejects_bad_user_data():
    with pytest.raises(UserInputError, match="runcmd"):
        _metal_userdata.render_cloud_config("b1", user_data="#!/bin/sh\n")
    with pytest.raises(UserInputError, match="valid YAML"):
        _metal_userdata.render_cloud_config("b1", user_data="#cloud-config\n: [\n")
    with pytest.raises(UserInputError, match="mapping"):
        _metal_userdata.render_cloud_config("b1", user_data="#cloud-config\n- a\n")


def _extract_host_key(userdata: str) -> str:
    """What the activation script's sed does, in Python."""
    inside, lines = False, []
    for line in userdata.splitlines():
        if line.startswith(_metal_userdata.HOST_KEY_BEGIN):
            inside = True
            continue
        if line.startswith(_metal_userdata.HOST_KEY_END):
            inside = False
            continue
        if inside:
            lines.append(re.sub(r"^# ?", "", line))
    return "\n".join(lines) + "\n"


def test_nixos_userdata_current_and_legacy(tmp_path):
    text = _metal_userdata.render_nixos_userdata(
        "b1", "nixos_23_11", HOST_KEY, [USER_PUBLIC], ["kvm", "big-parallel"], "{ ... }: { }"
    )
    assert _extract_host_key(text) == HOST_PRIVATE
    assert 'nix.settings.system-features = [ "kvm" "big-parallel" ];' in text
    assert 'nix.settings.trusted-users = [ "root" ];' in text
    assert "users.users.root.openssh.authorizedKeys.keys" in text
    # The private key only appears in comments, never in a Nix string (which would reach the store).
    for line in text.splitlines():
        if "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ" in line:
            assert line.startswith("# ")
    legacy = _metal_userdata.render_nixos_userdata("b1", "nixos_21_11", None, [], ["big-parallel"])
    assert "nix.systemFeatures" in legacy and "nix.trustedUsers" in legacy
    assert _metal_userdata.HOST_KEY_BEGIN not in legacy
    nix = shutil.which("nix-instantiate")
    if nix is None:
        pytest.skip("nix-instantiate is not installed: the Nix syntax check did not run")
    for name, body in (("current.nix", text), ("legacy.nix", legacy)):
        path = tmp_path / name
        path.write_text(body)
        proc = subprocess.run([nix, "--parse", str(path)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr


def test_nixos_activation_script_sed_extracts_the_key(tmp_path):
    text = _metal_userdata.render_nixos_userdata("b1", "nixos_23_11", HOST_KEY, [], [])
    src = tmp_path / "userdata.nix"
    src.write_text(text)
    line = next(x for x in text.splitlines() if "/bin/sed " in x)
    command = line.strip().replace("${pkgs.gnused}/bin/sed", "sed").split(" > ")[0].replace('"$src"', str(src))
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    assert proc.stdout == HOST_PRIVATE


def test_nix_string_escapes():
    assert _metal_userdata.nix_string('a"b${c}\\d\n') == '"a\\"b\\${c}\\\\d\\n"'


def test_retry_classifier():
    class Resp:
        def __init__(self, status):
            self.status_code = status

    class Err(Exception):
        def __init__(self, status):
            super().__init__("Error %d: x" % status)
            self.response = Resp(status)

    assert metal.is_retryable_metal_error(Err(429))
    assert metal.is_retryable_metal_error(Err(503))
    assert not metal.is_retryable_metal_error(Err(422))
    assert not metal.is_retryable_metal_error(Err(401))


def test_catalogue_kvm_defaults_to_bare_metal():
    assert _metal_catalogue.Catalogue.has_kvm({"slug": "x", "line": "baremetal", "specs": {}})
    assert not _metal_catalogue.Catalogue.has_kvm({"slug": "x", "specs": {"features": {"kvm": False}}})
    assert _metal_catalogue.Catalogue.architecture({"slug": "c3.large.arm64"}) == "aarch64"
    assert _metal_catalogue.Catalogue.architecture({"slug": "m3.large.x86"}) == "x86_64"
