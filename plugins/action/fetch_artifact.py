# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: fetch one large file from the builder to the controller over the
host's own SSH settings, in parallel streams, resumably, hashing on both ends while the
bytes stream (see plugin_utils/fetch.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from typing import Any, Dict, List, Optional, Tuple

from ansible.module_utils.common.text.converters import to_text
from ansible.utils.display import Display
from ansible_collections.nixforge.images.plugins.module_utils._base._checksum_record import record, recorded
from ansible_collections.nixforge.images.plugins.plugin_utils._action import ControllerAction
from ansible_collections.nixforge.images.plugins.plugin_utils.fetch import (
    MIB,
    FetchError,
    Transfer,
    remote_command,
    ssh_command,
)

display = Display()

ARGUMENT_SPEC: Dict[str, Any] = {
    "src": {"type": "str", "required": True},
    "dest": {"type": "path", "required": True},
    "sha256": {"type": "str", "default": ""},
    "method": {"type": "str", "default": "ssh", "choices": ["ssh", "rsync"]},
    "streams": {"type": "int", "default": 4},
    "timeout": {"type": "int", "default": 3600},
    "ciphers": {
        "type": "str",
        "default": "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com",
    },
    "ssh_args": {"type": "str", "default": ""},
    "progress_interval": {"type": "int", "default": 15},
    "remote_python": {"type": "str", "default": ""},
}
SSH_CONNECTIONS = ("ssh", "ansible.builtin.ssh", "smart", "paramiko", "paramiko_ssh", "ansible.builtin.paramiko_ssh")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(4 * MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return "%.1f %s" % (size, unit) if unit != "B" else "%d B" % size
        size /= 1024.0
    return "%d B" % size


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC

    def _option(self, *names: str) -> Any:
        for name in names:
            try:
                value = self._connection.get_option(name)
            except (KeyError, AttributeError):
                continue
            if value not in (None, ""):
                return value
        return None

    def _ssh(self, params: Dict[str, Any]) -> List[str]:
        """The ssh command Ansible's connection would use for this host (address, port,
        user, key, ssh_common_args and ssh_extra_args, hence the pinned known_hosts)."""
        return ssh_command(
            host=str(self._option("host", "remote_addr") or self._play_context.remote_addr),
            port=self._option("port"),
            user=self._option("remote_user"),
            identity=self._option("private_key_file"),
            args=[self._option("ssh_common_args") or "", self._option("ssh_extra_args") or "", params["ssh_args"]],
            ciphers=params["ciphers"],
            executable=str(self._option("ssh_executable") or "ssh"),
        )

    def act(self, result: Dict[str, Any], params: Dict[str, Any], task_vars: Dict[str, Any]) -> Dict[str, Any]:
        host = self._task.delegate_to or task_vars.get("inventory_hostname", "")
        src, dest = params["src"], os.path.abspath(params["dest"])
        result.update(source=src, path=dest, builder=host, method=params["method"], changed=False)
        connection = task_vars.get("ansible_connection") or self._play_context.connection or "ssh"
        if connection not in SSH_CONNECTIONS:
            result.update(failed=True)
            result["msg"] = (
                "The artifact is fetched over SSH with the connection settings of %s, but its connection is %s. "
                "Use an SSH connection, or do not fetch (nixos_image_fetch: false) and collect the artifact yourself."
                % (host, connection)
            )
            return result
        if params["streams"] < 1 or params["timeout"] < 1:
            result.update(
                failed=True,
                msg="streams and timeout must be positive (got %d and %d)." % (params["streams"], params["timeout"]),
            )
            return result
        if self._task.check_mode:
            result.update(changed=True, msg="would fetch %s from %s to %s" % (src, host, dest))
            return result
        python = params["remote_python"] or self._remote_python(task_vars)
        ssh = self._ssh(params)
        expected = params["sha256"].strip().lower()
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        try:
            earlier = self._already_there(ssh, python, src, dest, expected)
            if earlier is not None:
                result.update(earlier, already_there=True, seconds=0.0, mib_per_s=0.0, resumed_bytes=0)
                return result
            return self._transfer(result, ssh, python, params, host, expected)
        except FetchError as exc:
            result.update(failed=True, msg="Fetching %s from %s failed: %s" % (src, host, to_text(exc)))
            return result

    def _remote_python(self, task_vars: Dict[str, Any]) -> str:
        python = task_vars.get("ansible_python_interpreter") or task_vars.get("ansible_facts", {}).get(
            "discovered_interpreter_python"
        )
        python = self._templar.template(python) if python else ""
        return python if python and python.startswith("/") else "python3"

    def _already_there(
        self, ssh: List[str], python: str, src: str, dest: str, expected: str
    ) -> Optional[Dict[str, Any]]:
        """A copy at dest with the builder's sha256 is not fetched again (both hashes run at once;
        a copy this plugin verified and nothing changed since is not hashed again)."""
        if not os.path.isfile(dest):
            return None
        known = recorded(dest)
        local: Dict[str, str] = {}
        thread = None
        if known is None:
            thread = threading.Thread(target=lambda: local.update(sha=file_sha256(dest)), daemon=True)
            thread.start()
        if not expected:
            proc = subprocess.run([*ssh, remote_command(python, "hash", src)], capture_output=True, check=False)
            lines = proc.stdout.decode(errors="replace").split("\n")
            if proc.returncode != 0 or len(lines) < 2:
                raise FetchError(
                    "cannot read it on the builder: %s" % proc.stderr.decode(errors="replace").strip()[-300:]
                )
            expected = lines[1].strip()
        if thread is not None:
            thread.join()
        if (known or local.get("sha")) != expected:
            return None
        if thread is not None:
            record(dest, expected)
        return {"sha256": expected, "size": os.path.getsize(dest)}

    def _transfer(
        self, result: Dict[str, Any], ssh: List[str], python: str, params: Dict[str, Any], host: str, expected: str
    ) -> Dict[str, Any]:
        """Fetch into the part file; a copy whose sha256 differs (bytes changed on the way or
        in a kept part file) is thrown away and fetched once more from scratch."""
        bad: List[str] = []
        for _attempt in range(2):
            done, want = self._fetch_once(result, ssh, python, params, host, expected)
            if done["local_sha256"] == want:
                break
            bad.append(done["local_sha256"] or "?")
            display.warning(
                "%s: the fetched copy of %s has sha256 %s, not %s as on the builder; it was removed%s."
                % (host, result["source"], bad[-1], want, "" if len(bad) > 1 else ", fetching it again")
            )
        else:
            raise FetchError(
                "every copy differed from the builder's file (sha256 %s; the copies had %s), so the bytes change"
                " on the way from the builder. Nothing was kept. Check the network path to the builder"
                " (a proxy or middlebox altering the stream) and the builder's disk, then run again."
                % (want, " and ".join(bad))
            )
        result.update(
            changed=True,
            already_there=False,
            sha256=want,
            size=done["size"],
            seconds=done["seconds"],
            mib_per_s=done["mib_per_s"],
            resumed_bytes=done["resumed_bytes"],
            corrupt_copies=bad,
        )
        return result

    def _fetch_once(
        self, result: Dict[str, Any], ssh: List[str], python: str, params: Dict[str, Any], host: str, expected: str
    ) -> Tuple[Dict[str, Any], str]:
        """One transfer into PART (resuming what an earlier one kept); moved to dest only
        when its sha256 is the builder's, otherwise removed with its state."""
        src, dest = result["source"], result["path"]
        part = os.path.join(os.path.dirname(dest), ".%s.part" % os.path.basename(dest))
        name = os.path.basename(src)

        def progress(p: Dict[str, Any]) -> None:
            percent = 100.0 * p["done"] / p["size"] if p["size"] else 100.0
            display.display(
                "%s: fetching %s: %s of %s (%.0f %%) after %d s"
                % (host, name, human(p["done"]), human(p["size"]), percent, p["seconds"])
            )

        transfer = Transfer(
            ssh,
            python,
            src,
            part,
            streams=params["streams"],
            timeout=params["timeout"],
            progress=progress,
            progress_interval=params["progress_interval"],
            remote_hash=not expected,
            method=params["method"],
        )
        try:
            done = transfer.run()
        except FetchError as exc:
            kept = transfer.done_bytes()
            raise FetchError(
                "%s. %s are kept in %s; running again resumes from there (timeout: %d s)."
                % (to_text(exc), human(kept), part, params["timeout"])
            ) from exc
        want = expected or done["remote_sha256"]
        transfer.state.remove()
        if done["local_sha256"] != want:
            os.unlink(part)
        else:
            os.replace(part, dest)
            record(dest, want)  # so that the next reader (b2_object, a re-run) need not hash it again
        return done, want
