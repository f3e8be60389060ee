"""builder_host's input checks and per-build state directory."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from ansible_collections.nixforge.images.plugins.plugin_utils.builder import (
    InputError,
    check_build_id,
    check_provision,
    cleanup_paths,
    expiry,
    prepare_state_dir,
    read_state,
    record_state,
    remove_paths,
)

GOOD = {
    "build_id": "sd-20261128-abc",
    "provider": "ec2",
    "ttl": "1h",
    "ssh_connection": "ssh",
    "ssh_host": "",
    "ssh_work_dir": "/var/tmp/x",
    "ssh_cidr": "203.0.113.7/32",
    "ssh_cidr_lookup": False,
    "ssh_cidr_lookup_url": "https://checkip.amazonaws.com/",
}


@pytest.mark.parametrize("build_id", ["a", "sd-1", "x" * 40])
def test_good_build_ids(build_id: str) -> None:
    check_build_id(build_id)


@pytest.mark.parametrize("build_id", ["", "-a", "a-", "A", "a_b", "x" * 41, 12, None])
def test_bad_build_ids(build_id) -> None:
    with pytest.raises(InputError, match="1-40 lowercase letters"):
        check_build_id(build_id)
    with pytest.raises(InputError, match="must name the build to tear down"):
        check_build_id(build_id, teardown=True)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"ssh_cidr": "203.0.113.7"}, "builder_host_ssh_cidr must be the controller's public IPv4"),
        ({"ssh_cidr": "203.0.113.7/33"}, "builder_host_ssh_cidr"),
        ({"ssh_cidr": "256.0.0.1/32"}, "builder_host_ssh_cidr"),
        ({"provider": "ssh"}, "needs builder_host_ssh_host"),
        ({"provider": "ssh", "ssh_host": "h", "ssh_work_dir": "rel"}, "absolute builder_host_ssh_work_dir"),
        ({"provider": "gcp"}, "builder_host_provider must be one of"),
        ({"ttl": "0m"}, "builder_host_ttl"),
        ({"ttl": "three hours"}, "builder_host_ttl"),
    ],
)
def test_bad_inputs_name_the_variable(change, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        check_provision(dict(GOOD, **change))


def test_good_inputs_pass() -> None:
    check_provision(GOOD)
    check_provision(dict(GOOD, ssh_cidr="", ssh_cidr_lookup=True))
    check_provision(dict(GOOD, provider="ssh", ssh_connection="local"))
    check_provision(dict(GOOD, provider="metal", ssh_cidr=""))


def test_expiry() -> None:
    e = expiry("90m", 0.0)
    assert e == {
        "started_epoch": 0,
        "started_at": "1970-01-01T00:00:00Z",
        "expires_at": "1970-01-01T01:30:00Z",
    }


def test_state_dir_keys_and_idempotence(tmp_path: Path) -> None:
    state = tmp_path / "st"
    p = dict(GOOD, state_dir=str(state))
    first = prepare_state_dir(p)
    assert sorted(first["made"]) == ["id_ed25519", "ssh_host_ed25519_key"]
    assert stat.S_IMODE(state.stat().st_mode) == 0o700 and (state / ".gitignore").read_text() == "*\n"
    assert first["keys"]["user_public_key"].startswith("ssh-ed25519 ")
    assert first["keys"]["user_public_key"].endswith("nixforge-sd-20261128-abc")
    again = prepare_state_dir(p)
    assert again["made"] == [] and again["keys"] == first["keys"]
    local = prepare_state_dir(dict(p, provider="ssh", ssh_connection="local", state_dir=str(tmp_path / "l")))
    assert local["made"] == [] and local["keys"]["user_public_key"] == ""


def test_read_state(tmp_path: Path) -> None:
    assert read_state(str(tmp_path)) == {}
    (tmp_path / "state.json").write_text("not json")
    assert read_state(str(tmp_path)) == {}
    (tmp_path / "state.json").write_text(json.dumps({"connection": "ssh"}))
    assert read_state(str(tmp_path)) == {"connection": "ssh"}


MACHINE = {"connection": "ssh", "host": "192.0.2.5", "known_hosts_lines": ["192.0.2.5 ssh-ed25519 AAAAkey"]}


def test_record_state_pins_the_host_key_and_writes_private_state(tmp_path: Path) -> None:
    extra = {"provider": "ec2", "build_id": "sd-1", "started_at": "t0", "expires_at": "t1"}
    assert record_state(str(tmp_path), MACHINE, extra) == ["known_hosts", "state.json"]
    assert (tmp_path / "known_hosts").read_text() == "192.0.2.5 ssh-ed25519 AAAAkey\n"
    assert read_state(str(tmp_path)) == dict(MACHINE, **extra)
    for name in ("known_hosts", "state.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert record_state(str(tmp_path), MACHINE, extra) == []  # current: nothing written again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["known_hosts", "state.json"]  # no temp file left


def test_record_state_pins_nothing_for_a_local_builder(tmp_path: Path) -> None:
    assert record_state(str(tmp_path), {"connection": "local"}, {"build_id": "b"}) == ["state.json"]
    assert not (tmp_path / "known_hosts").exists()


@pytest.mark.parametrize("whole", [False, True])
def test_cleanup_removes_the_keys_or_the_state_dir_and_the_control_sockets(tmp_path: Path, whole: bool) -> None:
    state, control = tmp_path / "state", tmp_path / "cp"
    state.mkdir()
    control.mkdir()
    for name in ("id_ed25519", "id_ed25519.pub", "ssh_host_ed25519_key", "state.json"):
        (state / name).write_text(name)
    (control / "socket").write_text("")
    paths = cleanup_paths(str(state), str(control), whole)
    assert remove_paths(paths, check_mode=True) == paths and (state / "id_ed25519").exists()
    assert remove_paths(paths) == paths
    assert not control.exists()
    if whole:
        assert not state.exists()
    else:
        assert sorted(p.name for p in state.iterdir()) == ["id_ed25519.pub", "state.json"]
    assert remove_paths(paths) == []  # nothing left to remove: unchanged
