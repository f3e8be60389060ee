# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: copy an image definition to the builder, start its Nix build in the
background, follow it with progress (elapsed time, log tail) until it ends or times out,
fail with the log tail (the whole log kept on the controller), find the artifact."""

from __future__ import annotations

import json
import os
import shlex
import tarfile
import tempfile
import time
from typing import Any, Dict, Optional, Tuple

from ansible.module_utils.common.text.converters import to_text
from ansible.utils.display import Display
from ansible_collections.nixforge.images.plugins.plugin_utils._action import NixforgeAction
from ansible_collections.nixforge.images.plugins.plugin_utils.image import (
    INTERRUPTED,
    KERNEL_LOG_COMMAND,
    VANISHED,
    InputError,
    build_script,
    elapsed_text,
    failure_reason,
    follow_command,
    kernel_log_lines,
    resolve_image,
    start_command,
)

display = Display()

ARGUMENT_SPEC: Dict[str, Any] = {
    # what image_definition resolved, or the role's inputs to resolve here (one task fewer)
    "definition": {"type": "dict", "default": {}},
    "image": {"type": "dict", "default": {}},
    "method": {"type": "str", "default": "nix", "choices": ["nix", "docker"]},
    "nix_args": {"type": "list", "elements": "str", "default": []},
    "docker_image": {"type": "str", "default": "docker.io/nixos/nix:2.28.5"},
    "timeout": {"type": "int", "default": 7200},
    "poll_interval": {"type": "int", "default": 15},
    "poll_interval_max": {"type": "int", "default": 300},
    "progress_lines": {"type": "int", "default": 5},
    "failure_lines": {"type": "int", "default": 40},
    "log_dest": {"type": "path", "required": True},
    "sha256": {"type": "bool", "default": False},
    # look for EC2's spot interruption notice while following; None: when the builder is
    # an EC2 spot instance (host vars nixforge_builder_provider / nixforge_builder_lifecycle)
    "spot_notice": {"type": "bool", "default": None},
}

# Seconds the start command waits for build.sh to write build.log.
START_WAIT = 30

# Runs on the builder: the artifact(s) matching the kind's patterns in the build output.
FIND = r"""
import fnmatch, hashlib, json, os, sys
real = os.path.realpath(sys.argv[1])
where = os.path.join(real, sys.argv[2]) if sys.argv[2] else real
patterns = json.loads(sys.argv[3])
try:
    names = sorted(os.listdir(where))
except OSError:
    names = []
found = [os.path.join(where, n) for n in names
         if any(fnmatch.fnmatch(n, p) for p in patterns) and os.path.isfile(os.path.join(where, n))]
res = {"out": real, "found": found, "listing": []}
if len(found) != 1:
    for root, dirs, files in os.walk(real):
        res["listing"] += [os.path.join(root, n) for n in sorted(dirs + files)]
    res["listing"] = sorted(res["listing"])[:20]
else:
    res["size"] = os.path.getsize(found[0])
    if sys.argv[4] == "1":
        h = hashlib.sha256()
        with open(found[0], "rb") as fh:
            for b in iter(lambda: fh.read(1 << 20), b""):
                h.update(b)
        res["sha256"] = h.hexdigest()
print(json.dumps(res))
"""


def definition_tarball(plan: Dict[str, Any], script: str, directory: str) -> str:
    """The flake directory (with the user's module as ./nixforge-module) and build.sh
    in one archive: a single transfer, however many files the definition has."""
    path = os.path.join(directory, "definition.tar")
    with tarfile.open(path, "w") as tar:
        if plan["local_flake"]:
            tar.add(plan["local_flake"], arcname="flake")
        module = plan["local_module"]
        if module:
            arcname = "flake/nixforge-module" if os.path.isdir(module) else "flake/nixforge-module/default.nix"
            tar.add(module, arcname=arcname)
        script_path = os.path.join(directory, "build.sh")
        with open(script_path, "w") as fh:
            fh.write(script)
        os.chmod(script_path, 0o755)  # noqa: S103 - a script root runs on the builder
        tar.add(script_path, arcname="build.sh")
    return path


class ActionModule(NixforgeAction):
    argument_spec = ARGUMENT_SPEC
    TRANSFERS_FILES = True

    def _sh(self, command: str, what: str) -> str:
        """Run a shell command on the builder (with the task's become); fail naming `what`."""
        res = self._low_level_execute_command(command, sudoable=True)
        if res.get("rc", 1) != 0:
            raise RuntimeError(
                "%s failed (exit %s): %s"
                % (what, res.get("rc"), (res.get("stderr") or res.get("stdout") or "").strip()[-800:])
            )
        return to_text(res.get("stdout", ""))

    def act(self, result: Dict[str, Any], params: Dict[str, Any], task_vars: Dict[str, Any]) -> Dict[str, Any]:
        host = task_vars.get("inventory_hostname", "")
        try:
            # resolved on the controller, before anything runs on the builder
            plan = params["definition"] or resolve_image(params["image"], os.getcwd())
        except InputError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        result["definition"] = plan
        result.update(label=plan["label"], work_dir=plan["work_dir"])
        if self._task.check_mode:
            result.update(changed=True, msg="would build %s on %s" % (plan["label"], host))
            return result
        python = task_vars.get("ansible_facts", {}).get("discovered_interpreter_python") or "python3"
        if params["spot_notice"] is None:
            on_ec2 = task_vars.get("nixforge_builder_provider") == "ec2"
            params["spot_notice"] = on_ec2 and task_vars.get("nixforge_builder_lifecycle") == "spot"
        self._notice = ""
        try:
            self._start(plan, params)
            code, seconds, tail = self._follow(plan, params, host)
            if code != 0:
                return self._failed(result, plan, params, host, (code, seconds), tail)
            found = self._find(plan, params, python)
        except RuntimeError as exc:
            result.update(failed=True, msg="Building %s on %s: %s" % (plan["label"], host, to_text(exc)))
            return result
        return self._report(result, plan, found, seconds)

    def _find(self, plan: Dict[str, Any], params: Dict[str, Any], python: str) -> Dict[str, Any]:
        """Look for the artifact in the build's output on the builder (hashing it when asked)."""
        argv = (
            python if python.startswith("/") else "python3",
            "-c",
            FIND,
            plan["work_dir"] + ("/result" if params["method"] == "nix" else "/out"),
            plan["artifact_dir"],
            json.dumps(plan["patterns"]),
            "1" if params["sha256"] else "0",
        )
        out = self._sh(" ".join(shlex.quote(a) for a in argv), "Looking for the artifact")
        return json.loads(out.strip().splitlines()[-1])

    @staticmethod
    def _report(result: Dict[str, Any], plan: Dict[str, Any], found: Dict[str, Any], seconds: float) -> Dict[str, Any]:
        """The task's result: the one artifact found, or a failure saying what the output holds instead."""
        if len(found["found"]) != 1:
            result.update(failed=True)
            result["msg"] = (
                "The build of %s succeeded, but its output %s has %s %s (nixos_image_kind: %s); it holds: %s."
                " Check that nixos_image_attribute names the %s image (%s in the shipped definitions;"
                " for SD images keep sdImage.compressImage = true) and that nixos_image_kind is right."
                % (
                    plan["label"],
                    found["out"],
                    len(found["found"]) or "no",
                    plan["describe"],
                    plan["kind"],
                    ", ".join(found["listing"]) or "nothing",
                    plan["kind"],
                    plan["default_attribute"],
                )
            )
            return result
        artifact = found["found"][0]
        result.update(
            changed=True,
            artifact=artifact,
            name=os.path.basename(artifact),
            size=found["size"],
            build_seconds=round(seconds, 1),
        )
        if "sha256" in found:
            result["sha256"] = found["sha256"]
        return result

    def _start(self, plan: Dict[str, Any], params: Dict[str, Any]) -> None:
        script = build_script(plan, params["method"], params["nix_args"], params["docker_image"], params["timeout"])
        work = shlex.quote(plan["work_dir"])
        with tempfile.TemporaryDirectory(prefix="nixforge-def-") as local:
            tarball = definition_tarball(plan, script, local)
            remote_tmp = self._make_tmp_path()
            try:
                remote = self._connection._shell.join_path(remote_tmp, "definition.tar")
                self._transfer_file(tarball, remote)
                self._sh(
                    "rm -rf %s && mkdir -p %s && chmod 0755 %s && tar --no-same-owner -C %s -xf %s"
                    % (work, work, work, work, shlex.quote(remote)),
                    "Copying the image definition to the builder",
                )
            finally:
                self._remove_tmp_path(remote_tmp)
        out = self._sh(start_command(plan["work_dir"], START_WAIT), "Starting the build")
        if out.split()[-1:] != ["started"]:
            raise RuntimeError(
                "build.sh did not start within %d s (no build.log in %s); check that the builder"
                " has free disk and processes, then run again" % (START_WAIT, plan["work_dir"])
            )

    def _follow(self, plan: Dict[str, Any], params: Dict[str, Any], host: str) -> Tuple[Optional[int], float, str]:
        """Rounds of waiting on the builder (each ends as soon as the build does), growing
        from poll_interval to poll_interval_max; progress after every unfinished round."""
        started = time.monotonic()
        work = shlex.quote(plan["work_dir"])
        round_no = 1
        while True:
            wait = min(params["poll_interval"] * round_no, params["poll_interval_max"])
            command = follow_command(plan["work_dir"], wait, params["progress_lines"], params["spot_notice"])
            out = self._sh(command, "Following the build")
            lines = out.splitlines() or ["running"]
            head, tail = lines[0].split(), lines[1:]
            elapsed = time.monotonic() - started
            if head[:1] == ["interrupted"]:
                self._notice = lines[0][len("interrupted") :].strip()
                return INTERRUPTED, elapsed, "\n".join(tail)
            if head[:1] == ["vanished"]:
                return VANISHED, elapsed, "\n".join(tail)
            if head[:1] == ["finished"]:
                code = int(head[1])
                # the builder's own clock: the build's start (for its kernel log) and length
                self._started_epoch = float(head[2]) if len(head) >= 4 else None
                seconds = float(head[3]) - float(head[2]) if len(head) >= 4 else elapsed
                return code, seconds, "\n".join(tail)
            display.display(
                "%s: building %s: %s so far (nixos_image_build_timeout %d s)\n%s"
                % (host, plan["label"], elapsed_text(elapsed), params["timeout"], "\n".join("| " + t for t in tail))
            )
            if elapsed > params["timeout"] + 60:
                # build.sh's timeout should have ended it: stop what is left.
                self._low_level_execute_command("pkill -f %s/build.sh" % work, sudoable=True)
                return None, elapsed, "\n".join(tail)
            round_no += 1

    def _kernel_log(self, code: Optional[int]) -> str:
        """For a build killed by a signal: the out-of-memory lines the builder's kernel logged
        since the build started (or why there are none)."""
        if code is None or code <= 128:
            return ""
        res = self._low_level_execute_command(KERNEL_LOG_COMMAND, sudoable=True)
        return kernel_log_lines(to_text(res.get("stdout", "")), getattr(self, "_started_epoch", None))

    def _failed(
        self,
        result: Dict[str, Any],
        plan: Dict[str, Any],
        params: Dict[str, Any],
        host: str,
        ended: Tuple[Optional[int], float],
        tail: str,
    ) -> Dict[str, Any]:
        code, seconds = ended
        log_remote = plan["work_dir"] + "/build.log"
        res = self._low_level_execute_command(
            "tail -n %d %s" % (params["failure_lines"], shlex.quote(log_remote)), sudoable=True
        )
        tail = to_text(res.get("stdout", "")).rstrip() or tail or "(no build log)"
        log_copy = params["log_dest"]
        try:
            os.makedirs(os.path.dirname(log_copy), exist_ok=True)
            self._connection.fetch_file(log_remote, log_copy)
            kept = "\nThe whole log: %s" % log_copy
        except Exception as exc:  # noqa: BLE001 - the failure below matters more than the copy
            kept = "\n(the whole log could not be copied: %s)" % to_text(exc)
        result.update(failed=True, exit_code=code)
        detail = self._notice if code == INTERRUPTED else self._kernel_log(code)
        reason = failure_reason(code, params["timeout"], seconds, detail)
        if code == INTERRUPTED:
            result["interrupted"] = {"provider": "ec2", "market": "spot", "notice": detail}
        result["msg"] = "The image build failed on %s: %s.\nBuilt: %s (%s).\nLast lines of the build log:\n%s%s" % (
            host,
            reason,
            plan["label"],
            params["method"],
            "\n".join("  " + line for line in tail.splitlines()),
            kept,
        )
        return result
