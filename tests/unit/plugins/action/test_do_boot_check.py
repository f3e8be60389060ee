"""The do_boot_check action's flow on fake module calls: what it creates, that it always
removes both, and how a failure reads. The real boot is in
tests/integration/test_playbook_do.py (passing) and test_boot_check.py (failing, Ctrl-C)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from ansible_collections.nixforge.images.plugins.action import do_boot_check as action
from ansible_collections.nixforge.images.plugins.plugin_utils import _bootprobe as probe

ARGS = dict(
    image="7000001",
    region="nyc3",
    build_id="b1",
    pipeline="do-image",
    ttl=None,
    expires_at=None,
    name=None,
    size=None,
    min_disk_size=3,
    command="cat /etc/nixforge-image",
    expect=None,
    boot_timeout=30,
    create_timeout=45,
    command_timeout=10,
    cleanup_timeout=10,
    oauth_token="secret-token",
    api_url=None,
)


class Modules:
    """Records the module calls; answers like do_ssh_key / do_droplet would."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    def __call__(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        state = args.get("state", "present")
        self.calls.append((name, args))
        if self.fail == "%s/%s" % (name, state):
            return {"failed": True, "msg": "HTTP 500: boom"}
        if name == "do_ssh_key" and state == "present":
            return {"changed": True, "ssh_key": {"id": "55", "name": "nixforge-b1-x", "fingerprint": "fp"}}
        if name == "do_droplet" and state == "present":
            droplet = {"id": "9", "name": args["name"], "size": "s-1vcpu-1gb", "region": "nyc3"}
            return {"changed": True, "droplet": dict(droplet, public_ipv4="192.0.2.9", price_hourly=0.00893)}
        return {"changed": True, "removed": [{"id": "9" if name == "do_droplet" else "55"}]}

    def names(self) -> list[str]:
        return ["%s/%s" % (n, a.get("state", "present")) for n, a in self.calls]


@pytest.fixture
def ladder(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Fake network: what tcp_and_banner and ssh answer, set per test."""
    state: dict[str, Any] = {
        "tcp": (True, "SSH-2.0-OpenSSH_9.2"),
        "ssh": [(0, "", ""), (0, "nixforge sandbox image (do)\n", "")],
    }
    monkeypatch.setattr(probe, "tcp_and_banner", lambda address, timeout: state["tcp"])

    def ssh(self: Any, command: str, timeout: float) -> tuple:
        state.setdefault("commands", []).append(command)
        known = open(os.path.join(self.workdir, "known_hosts")).read()
        state["known_hosts"] = known
        return state["ssh"].pop(0) if len(state["ssh"]) > 1 else state["ssh"][0]

    monkeypatch.setattr(action.BootCheck, "ssh", ssh)
    monkeypatch.setattr(action.time, "sleep", lambda s: None)
    return state


def run(modules: Modules, **overrides: Any) -> tuple[action.BootCheck, str | None]:
    check = action.BootCheck(modules, dict(ARGS, **overrides))
    failure = None
    try:
        check.run()
    except action.BootCheckFailed as exc:
        failure = str(exc)
    finally:
        check.cleanup()
    return check, failure


def test_a_passing_check_creates_key_and_droplet_then_removes_both(ladder: dict[str, Any]) -> None:
    modules = Modules()
    check, failure = run(modules)
    assert failure is None
    cleanup = ["do_droplet/absent", "do_ssh_key/absent", "do_droplet/absent"]
    assert modules.names() == ["do_ssh_key/present", "do_droplet/present", *cleanup]
    # the droplet's deletion is asked for without waiting, the key goes, then the wait
    assert [a.get("wait") for _n, a in modules.calls[2:]] == [False, None, True]
    droplet_args = modules.calls[1][1]
    assert droplet_args["ssh_keys"] == ["55"] and droplet_args["min_disk_size"] == 3 and droplet_args["size"] is None
    assert droplet_args["name"] == "nixforge-b1-boot" and droplet_args["wait_timeout"] == 45  # create_timeout
    # the host key goes in by user data, and exactly that key is pinned for the address
    assert droplet_args["user_data"].startswith("#cloud-config") and "ed25519_private" in droplet_args["user_data"]
    host_public = droplet_args["user_data"].split("ed25519_public: ")[1].split()[:2]
    assert ladder["known_hosts"] == "192.0.2.9 %s\n" % " ".join(host_public)
    # one expiry for both, the token passed on to the modules
    assert modules.calls[0][1]["expires_at"] == droplet_args["expires_at"] == check.expires_at
    assert all(a["oauth_token"] == "secret-token" for _n, a in modules.calls)
    assert check.result["output"] == "nixforge sandbox image (do)"
    assert check.result["reached"] == "login" and check.result["boot_seconds"] is not None
    assert check.result["cost"] == 0.01 and check.result["billed_seconds"] == 60
    assert check.result["removed"] == {"droplets": [{"id": "9"}], "ssh_keys": [{"id": "55"}]}
    assert ladder["commands"] == ["true", "cat /etc/nixforge-image"]
    assert not os.path.exists(check.workdir)  # the private keys are gone


def test_no_ssh_banner_times_out_naming_the_option_and_the_stage(ladder: dict[str, Any]) -> None:
    ladder["tcp"] = (True, None)
    modules = Modules()
    _check, failure = run(modules, boot_timeout=0)
    assert failure is not None
    assert "within 0 s of becoming active (option 'boot_timeout'; do_image_publish_boot_timeout" in failure
    assert "192.0.2.9 and TCP port 22 accepted connections, but no SSH server ever greeted" in failure
    assert modules.names()[-3:] == ["do_droplet/absent", "do_ssh_key/absent", "do_droplet/absent"]


def test_a_refused_login_says_so(ladder: dict[str, Any]) -> None:
    ladder["ssh"] = [(255, "", "root@192.0.2.9: Permission denied (publickey).\n")]
    _check, failure = run(Modules(), boot_timeout=0)
    assert failure is not None and "login as root with the build's key failed" in failure
    assert "Permission denied (publickey)" in failure


def test_a_failing_command_fails_the_check_and_still_cleans_up(ladder: dict[str, Any]) -> None:
    ladder["ssh"] = [(0, "", ""), (1, "", "cat: /etc/nixforge-image: No such file or directory\n")]
    modules = Modules()
    check, failure = run(modules)
    assert failure is not None and "exited with 1" in failure and "No such file" in failure
    assert check.result["reached"] == "login"
    assert modules.names()[-3:] == ["do_droplet/absent", "do_ssh_key/absent", "do_droplet/absent"]


def test_expect_must_be_in_the_output(ladder: dict[str, Any]) -> None:
    _check, failure = run(Modules(), expect="sha256:abc")
    assert failure is not None and "'sha256:abc'" in failure


def test_a_failed_droplet_create_still_removes_the_key_and_the_droplet(ladder: dict[str, Any]) -> None:
    modules = Modules(fail="do_droplet/present")
    check, failure = run(modules)
    assert failure == "Creating the boot check's droplet failed: HTTP 500: boom"
    # the create may have happened before the error: removal runs for both
    cleanup = ["do_droplet/absent", "do_ssh_key/absent", "do_droplet/absent"]
    assert modules.names() == ["do_ssh_key/present", "do_droplet/present", *cleanup]
    assert check.result["reached"] == "created" and check.result["boot_seconds"] is None


def test_a_failed_key_registration_creates_no_droplet(ladder: dict[str, Any]) -> None:
    modules = Modules(fail="do_ssh_key/present")
    check, failure = run(modules)
    assert failure is not None and failure.startswith("Registering the boot check's SSH key failed")
    assert modules.names() == ["do_ssh_key/present", "do_ssh_key/absent"]
    assert check.result["reached"] == "none"


def test_an_interrupt_still_cleans_up(ladder: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(address: str, timeout: float) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(probe, "tcp_and_banner", interrupted)
    modules = Modules()
    check = action.BootCheck(modules, dict(ARGS))
    with pytest.raises(KeyboardInterrupt):
        try:
            check.run()
        finally:
            check.cleanup()
    assert modules.names()[-3:] == ["do_droplet/absent", "do_ssh_key/absent", "do_droplet/absent"]


def test_a_failed_removal_is_reported_with_the_reaper_command(ladder: dict[str, Any]) -> None:
    modules = Modules(fail="do_droplet/absent")
    check = action.BootCheck(modules, dict(ARGS))
    check.run()
    errors = check.cleanup()["errors"]
    assert errors == [
        "Removing the boot check's droplet failed: HTTP 500: boom",
        "Waiting until the boot check's droplet is gone failed: HTTP 500: boom",
    ]
    assert modules.names()[-2] == "do_ssh_key/absent"  # the key goes whatever the droplet did
    message = action.ActionModule.leak_message("b1", errors)
    assert "playbooks/reap.yml -e nixforge_build_id=b1" in message


def test_expiry_defaults_to_an_hour_and_refuses_both() -> None:
    from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError

    assert action.expiry({"ttl": None, "expires_at": "2026-12-06T22:00:00Z"}).hour == 22
    with pytest.raises(UserInputError):
        action.expiry({"ttl": "1h", "expires_at": "2026-12-06T22:00:00Z"})


def test_the_private_keys_go_even_when_the_removal_breaks(ladder: dict[str, Any]) -> None:
    def broken(name: str, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("state") == "absent":
            raise RuntimeError("connection to the controller lost")
        return Modules()(name, args)

    check = action.BootCheck(broken, dict(ARGS))
    check.run()
    with pytest.raises(RuntimeError):
        check.cleanup()
    assert not os.path.exists(check.workdir)  # removed before the API calls


def test_sigterm_becomes_an_interrupt_while_the_check_runs() -> None:
    import signal

    previous = action.terminate_as_interrupt()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGTERM) == previous
