"""nix_daemon's decisions: when nix.conf is written, which units are enabled, when the
service is started or restarted, and how Nix's version is read. systemctl and nix are
scripted; the file is real."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.nixforge.images.plugins.modules import nix_daemon


class Failed(Exception):
    pass


class FakeModule:
    """The parts of AnsibleModule the module uses; systemctl answers from `units`."""

    def __init__(self, tmp_path: Path, check: bool = False, diff: bool = False, **params: Any) -> None:
        nix = tmp_path / "bin" / "nix"
        nix.parent.mkdir(exist_ok=True)
        nix.write_text("#!/bin/sh\n")
        nix.chmod(0o755)
        self.params = {"config_path": str(tmp_path / "etc" / "nix" / "nix.conf"), "daemon": True}
        self.params.update(binfmt={}, system="", daemon_group="nix-users", daemon_users=[], kvm_build_users=False)
        self.params.update(services=[])
        self.params.update(search_path=[str(nix.parent)], **params)
        self.check_mode = check
        self._diff = diff
        self.units = {"nix-daemon.socket": "enabled", "nix-daemon.service": "enabled"}
        self.active = True
        self.calls: list[list[str]] = []
        self.version_output = "nix (Nix) 2.26.3\n"

    def run_command(self, argv: list[str], environ_update: dict[str, str] | None = None) -> tuple[int, str, str]:
        self.calls.append(argv)
        if argv[0] != "systemctl":
            return 0, self.version_output, ""
        verb, units = argv[1], argv[2:]
        if verb == "is-enabled":
            return 0, "".join(self.units[u] + "\n" for u in units), ""
        if verb == "is-active":
            return (0, "active\n", "") if self.active else (3, "inactive\n", "")
        return 0, "", ""

    def fail_json(self, msg: str, **kwargs: Any) -> None:
        raise Failed(msg)

    @staticmethod
    def atomic_move(src: str, dest: str) -> None:
        os.replace(src, dest)

    @staticmethod
    def set_mode_if_different(path: str, mode: str, changed: bool) -> bool:
        os.chmod(path, int(mode, 8))
        return True

    def changes(self) -> list[list[str]]:
        return [c[1:] for c in self.calls if c[0] == "systemctl" and c[1] not in ("is-enabled", "is-active")]


CONF = "max-jobs = 2\n"


def run(module: FakeModule) -> dict[str, Any]:
    return nix_daemon.NixDaemon(module).run()  # type: ignore[arg-type]


def test_a_fresh_builder_gets_the_file_and_a_restarted_daemon(tmp_path: Path) -> None:
    module = FakeModule(tmp_path, config=CONF)
    result = run(module)
    conf = Path(module.params["config_path"])
    assert conf.read_text() == CONF and stat.S_IMODE(conf.stat().st_mode) == 0o644
    assert result["changed"] and result["config_changed"] and result["service"] == "restarted"
    assert module.changes() == [["restart", "nix-daemon.service"]]
    assert result["nix_version"] == "2.26.3"


def test_nothing_changes_on_a_second_run(tmp_path: Path) -> None:
    run(FakeModule(tmp_path, config=CONF))
    module = FakeModule(tmp_path, config=CONF)
    result = run(module)
    assert not result["changed"] and result["service"] == "running" and result["enabled"] == []
    assert module.changes() == []


def test_disabled_units_are_enabled_and_a_stopped_service_started(tmp_path: Path) -> None:
    run(FakeModule(tmp_path, config=CONF))
    module = FakeModule(tmp_path, config=CONF)
    module.units["nix-daemon.socket"] = "disabled"
    module.active = False
    result = run(module)
    assert result["changed"] and result["enabled"] == ["nix-daemon.socket"] and result["service"] == "started"
    assert module.changes() == [["enable", "nix-daemon.socket"], ["start", "nix-daemon.service"]]


def test_check_mode_reports_and_touches_nothing(tmp_path: Path) -> None:
    module = FakeModule(tmp_path, check=True, diff=True, config=CONF)
    module.active = False
    result = run(module)
    assert result["changed"] and result["config_changed"] and result["service"] == "started"
    assert result["diff"]["before"] == "" and result["diff"]["after"] == CONF
    assert not Path(module.params["config_path"]).exists() and module.changes() == []


def test_single_user_nix_leaves_systemd_alone(tmp_path: Path) -> None:
    module = FakeModule(tmp_path, config=CONF, daemon=False)
    result = run(module)
    assert result["service"] == "unmanaged" and [c for c in module.calls if c[0] == "systemctl"] == []


def test_a_nix_that_does_not_answer_fails_with_its_output(tmp_path: Path, monkeypatch) -> None:
    module = FakeModule(tmp_path, config=CONF)
    monkeypatch.setattr(module, "run_command", lambda argv, environ_update=None: (1, "", "error: bad nix.conf\n"))
    with pytest.raises(Failed, match=r"Nix does not answer: .* exited 1: error: bad nix\.conf"):
        nix_daemon.NixDaemon(module).nix_version()  # type: ignore[arg-type]


def test_no_nix_at_all_fails_naming_where_it_looked(tmp_path: Path, monkeypatch) -> None:
    module = FakeModule(tmp_path, config=CONF, daemon=False)
    monkeypatch.setattr(nix_daemon, "BASE_PATH", [str(tmp_path / "usr-bin")])  # this machine may have a Nix
    module.params["search_path"] = [str(tmp_path / "nowhere")]
    with pytest.raises(Failed, match=r"Nix is not installed: no 'nix' in .*/usr-bin:.*/nowhere"):
        nix_daemon.NixDaemon(module).nix_version()  # type: ignore[arg-type]


def test_binfmt_handlers_there_need_no_restart(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "binfmt").mkdir()
    (tmp_path / "binfmt" / "qemu-aarch64").write_text("enabled\n")
    monkeypatch.setattr(nix_daemon, "BINFMT_DIR", str(tmp_path / "binfmt"))
    module = FakeModule(tmp_path, config=CONF, binfmt={"aarch64-linux": "qemu-aarch64"}, system="x86_64-linux")
    result = run(module)
    assert result["binfmt_restarted"] is False and ["restart", "systemd-binfmt.service"] not in module.changes()


def test_a_missing_binfmt_handler_restarts_systemd_binfmt_then_fails_when_still_missing(
    tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "binfmt").mkdir()
    monkeypatch.setattr(nix_daemon, "BINFMT_DIR", str(tmp_path / "binfmt"))
    module = FakeModule(tmp_path, config=CONF, binfmt={"aarch64-linux": "qemu-aarch64"}, system="x86_64-linux")
    with pytest.raises(Failed, match=r"no binfmt_misc handler for aarch64-linux .* on this x86_64-linux host"):
        run(module)
    assert module.changes() == [["restart", "systemd-binfmt.service"]]
    assert not Path(module.params["config_path"]).exists()  # stopped before nix.conf

    registered = FakeModule(tmp_path, config=CONF, binfmt={"aarch64-linux": "qemu-aarch64"}, system="x86_64-linux")
    original = registered.run_command

    def restart_registers(argv: list[str], environ_update: dict[str, str] | None = None) -> tuple[int, str, str]:
        if argv[:2] == ["systemctl", "restart"]:
            (tmp_path / "binfmt" / "qemu-aarch64").write_text("enabled\n")
        return original(argv, environ_update)

    registered.run_command = restart_registers  # type: ignore[method-assign]
    result = run(registered)
    assert result["binfmt_restarted"] and result["changed"]


def test_users_join_the_daemon_group_and_build_users_the_kvm_group(tmp_path: Path, monkeypatch) -> None:
    groups = {"nix-users": {"alice"}, "kvm": {"nixbld1"}, "nixbld": {"nixbld1", "nixbld2"}}
    users = {"alice", "bob", "nixbld1", "nixbld2"}
    monkeypatch.setattr(nix_daemon, "group_members", lambda group: sorted(groups.get(group, ())))
    monkeypatch.setattr(nix_daemon, "user_exists", lambda user: user in users)
    monkeypatch.setattr(nix_daemon, "in_group", lambda user, group: user in groups.get(group, ()))
    module = FakeModule(tmp_path, config=CONF, daemon_group="nix-users", daemon_users=["alice", "bob", "carol"])
    module.params["kvm_build_users"] = True
    result = run(module)
    assert result["users_added"] == ["bob to nix-users", "carol to nix-users", "nixbld2 to kvm"]
    assert [c for c in module.calls if c[0] in ("usermod", "useradd")] == [
        ["usermod", "-a", "-G", "nix-users", "bob"],
        ["useradd", "-m", "-G", "nix-users", "carol"],
        ["usermod", "-a", "-G", "kvm", "nixbld2"],
    ]
    check = FakeModule(tmp_path, check=True, config=CONF, daemon_group="nix-users", daemon_users=["bob"])
    assert run(check)["users_added"] == ["bob to nix-users"]
    assert [c for c in check.calls if c[0] in ("usermod", "useradd")] == []


def test_services_are_enabled_and_started_once(tmp_path: Path) -> None:
    module = FakeModule(tmp_path, config=CONF, services=["docker.service"])
    module.units["docker.service"] = "disabled"
    module.active = False
    result = run(module)
    assert result["services_started"] == ["docker.service"]
    assert module.changes()[:2] == [["enable", "docker.service"], ["start", "docker.service"]]
    again = FakeModule(tmp_path, config=CONF, services=["docker.service"])
    again.units["docker.service"] = "enabled"
    assert run(again)["services_started"] == [] and not again.changes()


def test_in_group_counts_the_primary_group() -> None:
    import grp
    import os
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    assert nix_daemon.in_group(me, grp.getgrgid(os.getgid()).gr_name)
    assert not nix_daemon.in_group(me, "no-such-group-nixforge")
    assert nix_daemon.user_exists(me) and not nix_daemon.user_exists("no-such-user-nixforge")
