"""host_changes' record and undo on real files in a temporary directory: each change is
recorded before it is made and only when it adds something, and the undo of a record
leaves the files exactly as they were. Users, groups and services are scripted (the
commands are recorded, not run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.nixforge.images.plugins.modules import host_changes


class FakeModule:
    def __init__(self, check: bool = False, **params: Any) -> None:
        self.params = {"record": "", "phase": "setup", "changes": [], "work_dir": "", "state": "present"}
        self.params.update(params)
        self.check_mode = check
        self._diff = False
        self.calls: list[list[str]] = []

    def run_command(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(argv)
        return 1 if argv[-2:] == ["--quiet", "nix-daemon"] else 0, "", ""

    def get_bin_path(self, name: str) -> str:
        return "/bin/" + name


MARK = "# {mark} nixforge b1 nix_remote_builder"


def make(tmp_path: Path, changes: list[dict], check: bool = False, phase: str = "setup") -> host_changes.Maker:
    module = FakeModule(check=check, record=str(tmp_path / "work" / "record.jsonl"), changes=changes, phase=phase)
    maker = host_changes.Maker(module)  # type: ignore[arg-type]
    maker.apply(changes)
    return maker


def test_blocks_are_put_in_place_and_taken_out_exactly() -> None:
    text = "a = 1\nb = 2"
    added = host_changes.with_block(text, MARK, "x = 3")
    block = "# BEGIN nixforge b1 nix_remote_builder\nx = 3\n# END nixforge b1 nix_remote_builder\n"
    assert added == "a = 1\nb = 2\n" + block
    assert host_changes.with_block(added, MARK, "x = 4").count("BEGIN") == 1
    assert host_changes.without_block(host_changes.with_block(text + "\n", MARK, "x"), MARK) == text + "\n"


def test_a_torn_last_line_of_the_record_is_skipped() -> None:
    entries = host_changes.parse_record('{"kind": "dir", "path": "/a"}\n{"kind": "user", "name": "n"}\n{"kind": "fi')
    assert [e["kind"] for e in entries] == ["user", "dir"]  # newest first


def test_work_dir_key_and_nix_conf_are_recorded_then_undone(tmp_path: Path) -> None:
    work, conf = tmp_path / "work", tmp_path / "etc" / "nix" / "nix.conf"
    keys = tmp_path / "home" / ".ssh" / "authorized_keys"
    keys.parent.mkdir(parents=True)
    conf.parent.parent.mkdir()
    keys.write_text("ssh-ed25519 OLD user\n")
    keys.chmod(0o600)
    before = keys.read_text()
    make(tmp_path, [{"kind": "dir", "path": str(work), "phase": "workdir"}])
    key_block = {"kind": "block", "path": str(keys), "marker": "# {mark} k", "block": "ssh-ed25519 NEW"}
    make(tmp_path, [key_block], phase="access")
    maker = make(
        tmp_path,
        [
            {"kind": "block", "path": str(conf), "marker": MARK, "block": "x = 1"},
            {"kind": "restart", "service": "nix-daemon"},
        ],
    )
    assert [e["kind"] for e in maker.recorded] == ["dir", "file_if_empty", "block", "restart"]
    record = work / "record.jsonl"
    kinds = [json.loads(line)["kind"] for line in record.read_text().splitlines()]
    assert kinds == ["dir", "block", "dir", "file_if_empty", "block", "restart"]
    assert "NEW" in keys.read_text() and "x = 1" in conf.read_text()

    undo = host_changes.Undoer(FakeModule(state="absent"))  # type: ignore[arg-type]
    undo.undo(str(record), str(work))
    assert keys.read_text() == before and keys.stat().st_mode & 0o777 == 0o600
    assert not conf.exists() and not conf.parent.exists() and not work.exists()
    assert undo.removed[-1] == "block # {mark} k in %s" % keys  # the access key last


def test_nothing_already_in_place_is_recorded(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    conf = tmp_path / "nix.conf"
    conf.write_text(host_changes.with_block("a\n", MARK, "x = 1"))
    maker = make(tmp_path, [{"kind": "block", "path": str(conf), "marker": MARK, "block": "x = 1"}])
    assert maker.recorded == [] and not maker.changed
    assert not (tmp_path / "work" / "record.jsonl").exists()


def test_check_mode_reports_and_writes_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    maker = make(tmp_path, [{"kind": "dir", "path": str(work)}, {"kind": "user", "name": "nixforge"}], check=True)
    assert maker.changed and not work.exists()
    assert [c for c in maker.module.calls if c[0] == "useradd"] == []


def test_a_path_that_is_not_a_directory_is_refused_naming_the_fix(tmp_path: Path) -> None:
    (tmp_path / "work").write_text("")
    with pytest.raises(host_changes.HostChangeError, match="set builder_host_ssh_work_dir"):
        make(tmp_path, [{"kind": "dir", "path": str(tmp_path / "work"), "fix": "set builder_host_ssh_work_dir"}])


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(host_changes.HostChangeError, match="unknown kind 'package'"):
        make(tmp_path, [{"kind": "package", "name": "x"}])


def test_undo_without_a_record_changes_nothing(tmp_path: Path) -> None:
    undo = host_changes.Undoer(FakeModule(state="absent"))  # type: ignore[arg-type]
    undo.undo(str(tmp_path / "none.jsonl"), "")
    assert undo.removed == []
