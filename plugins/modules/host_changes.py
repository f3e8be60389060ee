#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make changes to a host the user owns and record each one before making it, or undo
everything a record lists: the contract between builder_host's ssh provider and the roles
that run on such a host, in one place instead of a JSONL interpreter written in Jinja."""

from __future__ import annotations

DOCUMENTATION = r"""
module: host_changes
short_description: Make recorded changes to a host you own, or undo every recorded change
version_added: "0.3.0"
description:
  - Runs on a host that the user already had before the build (the C(ssh) provider of the
    nixforge.images.builder_host role), where nothing may stay behind after the teardown.
  - With O(state=present), makes each change of O(changes) and, when O(record) is set, appends
    to that file (one JSON object a line) what it is about to add B(before) adding it, so that
    an interrupted run still leaves a record that covers everything it did. A change that is
    already in place is not recorded again (a directory or file that existed before is never
    removed at teardown).
  - With O(state=absent), reads O(record) and removes, newest first, exactly what it lists
    (marked blocks, files, users, group memberships, directories when empty), switches NixOS back
    to its own configuration, restarts the services whose configuration changed back, removes
    O(work_dir), then the per-build access key (the entries of phase C(access)) last.
  - Without O(record) (a machine rented for the build), O(state=present) makes the changes and
    records nothing.
author:
  - nixforge.images contributors (@nixforge)
options:
  state:
    description: C(present) makes and records O(changes); C(absent) undoes what O(record) lists.
    type: str
    choices: [present, absent]
    default: present
  record:
    description:
      - The record file on the host (JSON lines). Empty with O(state=present) records nothing.
      - With O(state=absent), a missing file means there is nothing to undo.
    type: path
    default: ""
  phase:
    description:
      - Phase written into each new record entry. C(access) entries (the per-build login key) are
        undone last, after O(work_dir) is gone, so the teardown keeps its way in until the end.
    type: str
    choices: [setup, access, workdir]
    default: setup
  changes:
    description:
      - The changes to make, in order (O(state=present)). Each is a dictionary with C(kind) and the
        keys that kind reads. Paths may start with C(~) or C(~user).
      - C(dir) (C(path), C(mode), C(owner), C(fix)) creates a directory; an existing non-directory
        fails, naming C(fix).
      - C(block) (C(path), C(marker) with C({mark}), C(block), C(mode), C(owner), C(dir_mode))
        puts a marked block into a file, creating the file and its directory when missing.
      - C(file) (C(path), C(content), C(mode)) writes a whole file of ours.
      - C(file_if_empty) (C(path)) creates nothing; records the file when it does not exist yet
        (something this build causes will create it), so teardown removes it if it is empty then.
      - C(user) (C(name), C(comment), C(shell)) creates a user with a home when missing.
      - C(group_member) (C(user), C(group)) adds the user to an existing group.
      - C(restart) (C(service)) restarts the service when it runs and another change of this call
        changed something; teardown restarts it again.
      - Any change may set C(phase) to override O(phase) for what it records.
      - C(nixos_rebuild) (C(config)) records that teardown must run C(nixos-rebuild switch) with
        that configuration.
    type: list
    elements: dict
    default: []
  work_dir:
    description: With O(state=absent), a directory of ours removed with everything in it.
    type: path
    default: ""
extends_documentation_fragment:
  - nixforge.images.attributes
attributes:
  check_mode:
    support: full
    details: Reports what would be made or undone and records nothing.
  diff_mode:
    support: full
    details: The files and blocks it would write (O(state=present)).
  platform:
    support: full
    platforms: posix
    details: Runs on the host it changes (users and groups through useradd, usermod, gpasswd, userdel).
notes:
  - Run it with C(become=true) for O(state=absent), since the record lists changes made as root.
"""

EXAMPLES = r"""
- name: Install the per-build key (recorded; removed last at teardown)
  nixforge.images.host_changes:
    record: /var/tmp/nixforge-b1/.nixforge-record.jsonl
    phase: access
    changes:
      - kind: block
        path: ~/.ssh/authorized_keys
        marker: "# {mark} nixforge b1 key"
        block: ssh-ed25519 AAAA...
        mode: "0600"
        dir_mode: "0700"

- name: Undo everything the record lists
  nixforge.images.host_changes:
    state: absent
    record: /var/tmp/nixforge-b1/.nixforge-record.jsonl
    work_dir: /var/tmp/nixforge-b1
  become: true
"""

RETURN = r"""
recorded:
  description: The entries this run appended to O(record) (O(state=present)).
  returned: success
  type: list
  elements: dict
  sample:
    - {kind: user, name: nixforge, phase: setup}
removed:
  description: What was undone (O(state=absent)), one line each, newest first.
  returned: success
  type: list
  elements: str
  sample: ["block # {mark} nixforge b1 nix_remote_builder in /etc/nix/nix.conf", "user nixforge"]
"""

import errno
import grp
import json
import os
import pwd
import shutil
import time
from typing import Any, Callable, Dict, List, Optional

from ansible.module_utils.basic import AnsibleModule

# Undo order within a phase (each kind newest first), as the changes depend on each other:
# a block before the file that held it, members and users before their groups, files before
# their directories.
SETUP_ORDER = ("block", "file", "file_if_empty", "group_member", "user", "group", "dir")
ACCESS_ORDER = ("block", "file_if_empty", "dir")
# userdel fails while a process of the user is still leaving (nix-store --serve after its client).
USERDEL_ATTEMPTS = 6
USERDEL_PAUSE = 5


class HostChangeError(Exception):
    """A change that cannot be made as asked; the message names what to fix."""


def render_marker(marker: str, mark: str) -> str:
    return marker.replace("{mark}", mark)


def without_block(text: str, marker: str) -> str:
    """``text`` less the lines from the BEGIN marker to the END marker, both included."""
    begin, end = render_marker(marker, "BEGIN"), render_marker(marker, "END")
    out: List[str] = []
    inside = False
    for line in text.splitlines(True):
        stripped = line.rstrip("\n")
        if stripped == begin:
            inside = True
        elif inside and stripped == end:
            inside = False
        elif not inside:
            out.append(line)
    return "".join(out)


def with_block(text: str, marker: str, block: str) -> str:
    """``text`` with the marked block in place of an earlier one, else appended at the end."""
    body = "%s\n%s\n%s\n" % (render_marker(marker, "BEGIN"), block.rstrip("\n"), render_marker(marker, "END"))
    begin = render_marker(marker, "BEGIN")
    lines = text.splitlines(True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == begin]
    if not starts:
        return text + ("" if not text or text.endswith("\n") else "\n") + body
    head = "".join(lines[: starts[0]])
    tail = without_block("".join(lines[starts[0] :]), marker)
    return head + body + tail


def read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_in_place(path: str, text: str) -> None:
    """Rewrite an existing file keeping its inode, owner and mode (a user's authorized_keys)."""
    with open(path, "r+", encoding="utf-8") as handle:
        handle.seek(0)
        handle.write(text)
        handle.truncate()


def parse_record(text: str) -> List[Dict[str, Any]]:
    """The record's entries, newest first; a torn last line (a run killed mid-write) is skipped."""
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return list(reversed(entries))


def describe(entry: Dict[str, Any]) -> str:
    kind = entry.get("kind", "?")
    if kind == "block":
        return "block %s in %s" % (entry.get("marker"), entry.get("path"))
    if kind == "group_member":
        return "group_member %s in %s" % (entry.get("user"), entry.get("group"))
    return "%s %s" % (kind, entry.get("path") or entry.get("name") or entry.get("service") or entry.get("config"))


def owner_ids(owner: str) -> tuple:
    entry = pwd.getpwnam(owner)
    return entry.pw_uid, entry.pw_gid


class Maker:
    """state=present: each change is recorded before it is made, and only when it adds something."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.check = module.check_mode
        self.record = module.params["record"]
        self.phase = module.params["phase"]
        self.recorded: List[Dict[str, Any]] = []
        self.written = 0
        self.changed = False
        self.diffs: List[Dict[str, str]] = []

    def note(self, entry: Dict[str, Any], phase: Optional[str] = None) -> None:
        self.recorded.append(dict(entry, phase=phase or self.phase))
        self.changed = True
        self.flush()

    def flush(self) -> None:
        """Write what is not on disk yet; the record may live in a directory this call creates
        first (the work dir), so entries wait until that directory exists."""
        if not self.record or self.check or not os.path.isdir(os.path.dirname(self.record) or "."):
            return
        pending = self.recorded[self.written :]
        if pending:
            with open(self.record, "a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(entry, sort_keys=True) + "\n" for entry in pending)
                handle.flush()
                os.fsync(handle.fileno())
            self.written = len(self.recorded)

    def run(self, command: List[str], ok: tuple = (0,)) -> int:
        if self.check:
            return 0
        rc, out, err = self.module.run_command(command)
        if rc not in ok:
            raise HostChangeError("%s failed (rc %d): %s" % (" ".join(command), rc, (err or out).strip()))
        return rc

    def chown(self, path: str, owner: Optional[str]) -> None:
        if owner and not self.check:
            uid, gid = owner_ids(owner)
            os.chown(path, uid, gid)

    def make_dir(self, change: Dict[str, Any], path: str) -> None:
        if os.path.isdir(path):
            return
        if os.path.lexists(path):
            raise HostChangeError(
                "%s exists and is not a directory; %s" % (path, change.get("fix") or "choose a path of our own")
            )
        self.note({"kind": "dir", "path": path}, change.get("phase"))
        if not self.check:
            os.mkdir(path, int(str(change.get("dir_mode") or change.get("mode") or "0755"), 8))
            self.chown(path, change.get("owner"))
            self.flush()

    def make_block(self, change: Dict[str, Any], path: str) -> None:
        parent = {"owner": change.get("owner"), "mode": change.get("dir_mode"), "phase": change.get("phase")}
        self.make_dir(parent, os.path.dirname(path))
        text = read_text(path)
        if text is None:
            self.note({"kind": "file_if_empty", "path": path}, change.get("phase"))
        wanted = with_block(text or "", change["marker"], str(change.get("block") or ""))
        if wanted == text:
            return
        self.diffs.append({"before": text or "", "after": wanted, "before_header": path, "after_header": path})
        self.note({"kind": "block", "path": path, "marker": change["marker"]}, change.get("phase"))
        if self.check:
            return
        if text is None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(wanted)
            os.chmod(path, int(str(change.get("mode") or "0644"), 8))
            self.chown(path, change.get("owner"))
        else:
            write_in_place(path, wanted)

    def make_file(self, change: Dict[str, Any], path: str) -> None:
        content = str(change.get("content") or "")
        before = read_text(path)
        if before == content:
            return
        self.diffs.append({"before": before or "", "after": content, "before_header": path, "after_header": path})
        self.note({"kind": "file", "path": path}, change.get("phase"))
        if not self.check:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(content)
            os.chmod(path, int(str(change.get("mode") or "0644"), 8))

    def make_user(self, change: Dict[str, Any]) -> None:
        name = change["name"]
        try:
            pwd.getpwnam(name)
            return
        except KeyError:
            pass
        self.note({"kind": "user", "name": name})
        command = ["useradd", "--create-home", "--shell", change.get("shell") or "/bin/sh"]
        self.run([*command, "--comment", change.get("comment") or "nixforge", name])

    def make_member(self, change: Dict[str, Any]) -> None:
        try:
            members = grp.getgrnam(change["group"]).gr_mem
        except KeyError:
            return  # no such group here: nothing to join
        if change["user"] in members:
            return
        self.note({"kind": "group_member", "user": change["user"], "group": change["group"]})
        self.run(["usermod", "--append", "--groups", change["group"], change["user"]])

    def restart(self, service: str) -> None:
        systemctl = self.module.get_bin_path("systemctl")
        if systemctl and self.run_quiet([systemctl, "is-active", "--quiet", service]) == 0:
            self.run([systemctl, "restart", service])

    def run_quiet(self, command: List[str]) -> int:
        return self.module.run_command(command)[0]

    def make_expected(self, change: Dict[str, Any], path: str) -> None:
        if not os.path.lexists(path):
            self.note({"kind": "file_if_empty", "path": path}, change.get("phase"))

    def make_user_change(self, change: Dict[str, Any], path: str) -> None:
        self.make_user(change)

    def make_member_change(self, change: Dict[str, Any], path: str) -> None:
        self.make_member(change)

    def make_rebuild(self, change: Dict[str, Any], path: str) -> None:
        self.note({"kind": "nixos_rebuild", "config": change["config"]})

    def apply(self, changes: List[Dict[str, Any]]) -> None:
        handlers: Dict[str, Callable[[Dict[str, Any], str], None]] = {
            "dir": self.make_dir,
            "block": self.make_block,
            "file": self.make_file,
            "file_if_empty": self.make_expected,
            "user": self.make_user_change,
            "group_member": self.make_member_change,
            "nixos_rebuild": self.make_rebuild,
        }
        restarts = []
        for change in changes:
            kind = change.get("kind")
            if kind == "restart":
                restarts.append(change["service"])
            elif kind in handlers:
                handlers[kind](change, home_path(str(change.get("path") or "")))
            else:
                raise HostChangeError("changes: unknown kind %r (one of %s, restart)" % (kind, ", ".join(handlers)))
        if self.changed:
            for service in restarts:
                self.note({"kind": "restart", "service": service})
                self.restart(service)
        if self.record and not self.check and self.written < len(self.recorded):
            raise HostChangeError("record: the directory of %s does not exist; create it first" % self.record)


class Undoer:
    """state=absent: remove what the record lists, newest first, access last."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.check = module.check_mode
        self.removed: List[str] = []

    def done(self, entry: Dict[str, Any]) -> None:
        self.removed.append(describe(entry))

    def run(self, command: List[str]) -> int:
        return self.module.run_command(command)[0]

    def undo_block(self, entry: Dict[str, Any]) -> None:
        text = read_text(entry["path"])
        if text is None:
            return
        kept = without_block(text, entry["marker"])
        if kept != text:
            if not self.check:
                write_in_place(entry["path"], kept)
            self.done(entry)

    def undo_path(self, entry: Dict[str, Any]) -> None:
        """file: ours, removed; file_if_empty / dir: removed only when nothing else is in it."""
        path = entry["path"]
        kind = entry["kind"]
        if kind == "dir":
            if os.path.isdir(path) and not os.listdir(path):
                self.check or os.rmdir(path)
                self.done(entry)
        elif os.path.isfile(path) and (kind == "file" or os.path.getsize(path) == 0):
            self.check or os.unlink(path)
            self.done(entry)

    def undo_member(self, entry: Dict[str, Any]) -> None:
        try:
            members = grp.getgrnam(entry["group"]).gr_mem
        except KeyError:
            return
        if entry["user"] in members:
            self.check or self.run(["gpasswd", "--delete", entry["user"], entry["group"]])
            self.done(entry)

    def undo_user(self, entry: Dict[str, Any]) -> None:
        try:
            pwd.getpwnam(entry["name"])
        except KeyError:
            return
        self.done(entry)
        if self.check:
            return
        loginctl = self.module.get_bin_path("loginctl")
        if loginctl:  # systemd keeps a user manager a few seconds after the last logout
            self.run([loginctl, "terminate-user", entry["name"]])
        for attempt in range(USERDEL_ATTEMPTS):
            rc, out, err = self.module.run_command(["userdel", "--remove", entry["name"]])
            if rc in (0, 6):  # 6: no such user (gone meanwhile)
                return
            if attempt + 1 < USERDEL_ATTEMPTS:
                time.sleep(USERDEL_PAUSE)
        raise HostChangeError("userdel %s failed: %s" % (entry["name"], (err or out).strip()))

    def undo_group(self, entry: Dict[str, Any]) -> None:
        try:
            grp.getgrnam(entry["name"])
        except KeyError:
            return
        self.check or self.run(["groupdel", entry["name"]])
        self.done(entry)

    def undo_kinds(self, entries: List[Dict[str, Any]], order: tuple) -> None:
        handlers: Dict[str, Callable[[Dict[str, Any]], None]] = {
            "block": self.undo_block,
            "file": self.undo_path,
            "file_if_empty": self.undo_path,
            "dir": self.undo_path,
            "group_member": self.undo_member,
            "user": self.undo_user,
            "group": self.undo_group,
        }
        for kind in order:
            for entry in entries:
                if entry.get("kind") == kind:
                    handlers[kind](entry)

    def undo_system(self, entries: List[Dict[str, Any]]) -> None:
        """NixOS back to its own configuration, then a restart of what we reconfigured (if it runs)."""
        rebuilds = [e for e in entries if e.get("kind") == "nixos_rebuild"]
        if rebuilds:
            self.done(rebuilds[0])
            if not self.check and self.run(["nixos-rebuild", "switch", "-I", "nixos-config=" + rebuilds[0]["config"]]):
                raise HostChangeError("nixos-rebuild switch with %s failed" % rebuilds[0]["config"])
        systemctl = self.module.get_bin_path("systemctl")
        services = []
        for entry in entries:
            if entry.get("kind") == "restart" and entry.get("service") not in services:
                services.append(entry["service"])
        for service in services:
            if systemctl and self.run([systemctl, "is-active", "--quiet", service]) == 0:
                self.check or self.run([systemctl, "restart", service])
                self.done({"kind": "restart", "service": service})

    def undo(self, record: str, work_dir: str) -> None:
        text = read_text(record) if record else None
        entries = parse_record(text or "")
        self.undo_kinds([e for e in entries if e.get("phase", "setup") == "setup"], SETUP_ORDER)
        self.undo_system(entries)
        if work_dir and os.path.lexists(work_dir):
            if not self.check:
                shutil.rmtree(work_dir) if os.path.isdir(work_dir) else os.unlink(work_dir)
            self.done({"kind": "dir", "path": work_dir})
        self.undo_kinds([e for e in entries if e.get("phase") == "access"], ACCESS_ORDER)


def home_path(path: str) -> str:
    """``~/x`` and ``~user/x`` of a change's path in the remote user's home (a path inside the
    ``changes`` list, which the argument spec cannot type as a path)."""
    if not path.startswith("~"):
        return path
    head, sep, tail = path[1:].partition("/")
    try:
        home = pwd.getpwnam(head).pw_dir if head else os.environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return path  # no such user: left as written, the change then fails naming it
    return home.rstrip("/") + (sep + tail if sep else "")


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            record=dict(type="path", default=""),
            phase=dict(type="str", choices=["setup", "access", "workdir"], default="setup"),
            changes=dict(type="list", elements="dict", default=[]),
            work_dir=dict(type="path", default=""),
        ),
        supports_check_mode=True,
    )
    try:
        if module.params["state"] == "present":
            maker = Maker(module)
            maker.apply(module.params["changes"])
            diff = maker.diffs if module._diff else []
            module.exit_json(changed=maker.changed, recorded=maker.recorded, **({"diff": diff} if diff else {}))
        undoer = Undoer(module)
        undoer.undo(module.params["record"], module.params["work_dir"])
        module.exit_json(changed=bool(undoer.removed), removed=undoer.removed)
    except HostChangeError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            module.fail_json(msg="%s: %s (run this task with become=true)" % (exc.filename, exc.strerror))
        module.fail_json(msg="%s: %s" % (exc.filename, exc.strerror))


if __name__ == "__main__":
    main()
