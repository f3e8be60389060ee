# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: boot a droplet from an imported image, log in over SSH with a pinned host
key, run a check command, and always remove the droplet and its key again.

Keys are generated here, on the controller: the login key is registered for the droplet
(do_ssh_key), the host key goes in through user data and is pinned before the first
connection. The cloud calls are the modules do_ssh_key and do_droplet (their retries,
check mode and undo); the probe and its "how far did it get" diagnosis are in
plugin_utils/_bootprobe.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from typing import Any, Callable, Dict, Optional

from ansible import constants as C
from ansible.utils.display import Display
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import NixforgeError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import (
    compute_expiry,
    format_timestamp,
    validate_name,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._sshkeys import HostKey
from ansible_collections.nixforge.images.plugins.module_utils._base._userdata import host_key_config, render
from ansible_collections.nixforge.images.plugins.plugin_utils import _bootprobe as probe
from ansible_collections.nixforge.images.plugins.plugin_utils._action import NixforgeAction
from ansible_collections.nixforge.images.plugins.plugin_utils.builder import keygen, write_private

display = Display()

# Prints what identifies the build: the NixOS version and the system's store path (unique to
# the configuration), or, on an image without nixos-version, the image marker the
# collection's sandbox image definition writes.
DEFAULT_COMMAND = (
    "if command -v nixos-version >/dev/null 2>&1; then nixos-version; readlink -f /run/current-system;"
    " else cat /etc/nixforge-image; fi"
)
HOST_KEY_GRACE = 30.0
POLL_INTERVAL = 2.0

# keep in step with DOCUMENTATION in plugins/modules/do_boot_check.py
ARGUMENT_SPEC: Dict[str, Any] = dict(
    image=dict(type="str", required=True),
    region=dict(type="str", required=True),
    build_id=dict(type="str", required=True),
    pipeline=dict(type="str", default="default"),
    ttl=dict(type="str"),
    expires_at=dict(type="str"),
    name=dict(type="str"),
    size=dict(type="str"),
    min_disk_size=dict(type="int", default=0),
    command=dict(type="str", default=DEFAULT_COMMAND),
    expect=dict(type="str"),
    boot_timeout=dict(type="int", default=600),
    command_timeout=dict(type="int", default=120),
    cleanup_timeout=dict(type="int", default=300),
    create_timeout=dict(type="int", default=300),
    oauth_token=dict(type="str", no_log=True, aliases=["api_token"]),
    api_url=dict(type="str"),
    ca_bundle=dict(type="path"),
)


def expiry(args: Dict[str, Any]) -> Any:
    """From ``expires_at`` or ``ttl`` (default 1 h): the check removes everything itself long before."""
    if args.get("expires_at") and args.get("ttl"):
        return compute_expiry(args["expires_at"], args["ttl"])  # raises: give one of them
    return compute_expiry(args.get("expires_at"), None if args.get("expires_at") else args.get("ttl") or "1h")


def terminate_as_interrupt() -> Any:
    """Make SIGTERM raise KeyboardInterrupt in this worker, so that the cleanup runs: on
    Ctrl-C, ansible-playbook ends its workers with SIGTERM. The previous handler (None when
    this is not the main thread, where handlers cannot be set)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM during the boot check")

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:
        return None


class BootCheckFailed(Exception):
    """The boot check failed; the message says what was reached and what to do."""


class BootCheck:
    """One boot check: create, probe, run, and (``cleanup``) remove, with the numbers."""

    def __init__(
        self,
        call: Callable[[str, Dict[str, Any]], Dict[str, Any]],
        args: Dict[str, Any],
        tmp_root: Optional[str] = None,
    ) -> None:
        self.call = call
        self.args = args
        self.expires_at = format_timestamp(expiry(args))
        self.name = args["name"] or "nixforge-%s-boot" % args["build_id"]
        self.ladder = probe.Ladder()
        # inside ansible-playbook's own temporary directory when given: it removes that at
        # exit, also after Ctrl-C, should the worker be killed before its cleanup
        self.workdir = tempfile.mkdtemp(prefix="nixforge-boot-", dir=tmp_root)
        self.key_requested = self.droplet_requested = False
        self.requested: Optional[float] = None  # the create request: billing starts
        self.started: Optional[float] = None  # the droplet is active: boot_timeout counts from here
        self.logged_in: Optional[float] = None
        self.result: Dict[str, Any] = {"droplet": {}, "ssh_key": {}, "output": "", "reached": "none"}

    def common(self) -> Dict[str, Any]:
        """Options every module call gets (credentials only when given: else the modules' fallbacks)."""
        out = {"build_id": self.args["build_id"], "pipeline": self.args["pipeline"], "expires_at": self.expires_at}
        for option in ("oauth_token", "api_url", "ca_bundle"):
            if self.args.get(option):
                out[option] = self.args[option]
        return out

    def module(self, module_name: str, what: str, **options: Any) -> Dict[str, Any]:
        reply = self.call(module_name, dict(self.common(), **options))
        if reply.get("failed"):
            raise BootCheckFailed("%s failed: %s" % (what, reply.get("msg") or "no message"))
        return reply

    def keys(self) -> HostKey:
        """A login key and a host key, made here and never sent anywhere but the droplet."""
        for name, comment in (("id_ed25519", "nixforge-%s-boot"), ("ssh_host_ed25519_key", "nixforge-%s-boot-host")):
            keygen(os.path.join(self.workdir, name), comment % self.args["build_id"])
        with open(os.path.join(self.workdir, "ssh_host_ed25519_key")) as fh:
            private = fh.read()
        with open(os.path.join(self.workdir, "ssh_host_ed25519_key.pub")) as fh:
            public = fh.read().strip()
        return HostKey("ed25519", private, public)

    def run(self) -> None:
        host_key = self.keys()
        with open(os.path.join(self.workdir, "id_ed25519.pub")) as fh:
            login_public = fh.read().strip()
        self.key_requested = True
        key = self.module("do_ssh_key", "Registering the boot check's SSH key", public_key=login_public)["ssh_key"]
        self.result["ssh_key"] = {k: key.get(k) for k in ("id", "name", "fingerprint")}
        self.create_droplet(str(key["id"]), host_key)
        self.wait_for_login()
        self.run_command()

    def create_droplet(self, key_id: str, host_key: HostKey) -> None:
        user_data = render(host_key_config(host_key), comment="nixforge boot check of build %s" % self.args["build_id"])
        self.droplet_requested = True
        self.requested = time.time()
        reply = self.module(
            "do_droplet",
            "Creating the boot check's droplet",
            state="present",
            name=self.name,
            region=self.args["region"],
            image=str(self.args["image"]),
            size=self.args["size"] or None,
            min_disk_size=self.args["min_disk_size"],
            ssh_keys=[key_id],
            user_data=user_data,
            wait=True,
            # the provider's queue until the droplet is active is not the image's boot time
            wait_timeout=self.args["create_timeout"],
        )
        self.started = time.time()
        droplet = reply["droplet"]
        self.result["droplet"] = droplet
        self.ladder.address = droplet.get("public_ipv4")
        self.ladder.reach("address")
        write_private(
            os.path.join(self.workdir, "known_hosts"), probe.known_hosts_line(droplet["public_ipv4"], host_key.public)
        )

    def remaining(self) -> float:
        return (self.started or time.time()) + self.args["boot_timeout"] - time.time()

    def wait_for_login(self) -> None:
        """Climb the ladder until the login works or the boot timeout runs out."""
        address = str(self.ladder.address)
        mismatch_since: Optional[float] = None
        while True:
            tcp, banner = probe.tcp_and_banner(address, max(1.0, min(10.0, self.remaining())))
            if tcp:
                self.ladder.reach("tcp")
            if banner:
                self.ladder.reach("banner")
                self.ladder.banner = banner
                status, _out, err = self.ssh("true", max(5.0, min(30.0, self.remaining())))
                if status == 0:
                    self.ladder.reach("login")
                    self.logged_in = time.time()
                    return
                self.ladder.last_error = probe.last_line(err)
                if probe.HOST_KEY_MISMATCH.search(err):
                    mismatch_since = mismatch_since or time.time()
                    if time.time() - mismatch_since >= HOST_KEY_GRACE:
                        raise BootCheckFailed(self.host_key_message())
            if self.remaining() <= 0:
                raise BootCheckFailed(self.timeout_message())
            display.vvv("do_boot_check: %s not reached yet (%s)" % (address, self.ladder.describe()))
            time.sleep(max(0.0, min(POLL_INTERVAL, self.remaining())))

    def ssh(self, command: str, timeout: float) -> tuple:
        argv = probe.ssh_argv(
            str(self.ladder.address),
            os.path.join(self.workdir, "id_ed25519"),
            os.path.join(self.workdir, "known_hosts"),
            command,
            connect_timeout=int(max(5, min(30, timeout))),
        )
        return probe.run_ssh(argv, timeout)

    def timeout_message(self) -> str:
        return (
            "The image %s did not boot: droplet %s (%s) accepted no SSH login within %d s of becoming active "
            "(option 'boot_timeout'; do_image_publish_boot_timeout in the role); %s. Its serial console is in the "
            "DigitalOcean control panel "
            "(Recovery console)"
            % (
                self.args["image"],
                self.result["droplet"].get("id"),
                self.name,
                self.args["boot_timeout"],
                self.ladder.describe(),
            )
        )

    def host_key_message(self) -> str:
        return (
            "The image %s booted, but droplet %s (%s) does not present the host key given in its user data (%s): the "
            "image does not apply DigitalOcean user data (cloud-init's ssh_keys). Host key checking stays on"
            % (self.args["image"], self.result["droplet"].get("id"), self.ladder.address, self.ladder.last_error)
        )

    def run_command(self) -> None:
        status, out, err = self.ssh(self.args["command"], float(self.args["command_timeout"]))
        self.result["output"] = out.strip()
        if status != 0:
            raise BootCheckFailed(
                "The image %s booted and took the SSH login, but the check command exited with %d%s (option "
                "'command'; do_image_publish_boot_command in the role): %s"
                % (
                    self.args["image"],
                    status,
                    " (timed out)" if status == 124 else "",
                    probe.last_line(err) or out.strip()[-200:],
                )
            )
        expect = self.args.get("expect")
        if expect and expect not in out:
            raise BootCheckFailed(
                "The image %s booted, but the check command's output does not contain %r (option 'expect'): %s"
                % (self.args["image"], expect, out.strip()[-300:])
            )

    def cleanup(self) -> Dict[str, Any]:
        """Remove the droplet and the key (each whatever the other does), then the private
        keys on the controller whatever happened; errors as text."""
        # the private keys first: an interrupted cleanup must not leave them behind
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.remove()

    def remove(self) -> Dict[str, Any]:
        errors = []
        removed: Dict[str, Any] = {"droplets": [], "ssh_keys": []}
        # the droplet's deletion is asked for first (it is what costs), then the key goes,
        # then the wait for the droplet to be gone: a cleanup cut short leaves least behind
        steps = []
        if self.droplet_requested:
            steps.append(
                ("droplets", "do_droplet", "Removing the boot check's droplet", {"name": self.name, "wait": False})
            )
        if self.key_requested:
            steps.append(("ssh_keys", "do_ssh_key", "Removing the boot check's SSH key", {}))
        if self.droplet_requested:
            wait = {"name": self.name, "wait": True, "wait_timeout": self.args["cleanup_timeout"]}
            steps.append(("droplets", "do_droplet", "Waiting until the boot check's droplet is gone", wait))
        for key, module_name, what, options in steps:
            try:
                for item in self.module(module_name, what, state="absent", **options).get("removed") or []:
                    if item.get("id") not in [r.get("id") for r in removed[key]]:
                        removed[key].append(item)
            except BootCheckFailed as exc:
                errors.append(str(exc))
        self.result["removed"] = removed
        gone = time.time()
        if self.requested is not None:
            price = self.result["droplet"].get("price_hourly")
            self.result.update(probe.summary_numbers(self.requested, self.logged_in, gone, price, active=self.started))
        self.result["reached"] = self.ladder.reached if self.droplet_requested else "none"
        return {"errors": errors}


class ActionModule(NixforgeAction):
    argument_spec = ARGUMENT_SPEC
    _VALID_ARGS = frozenset(ARGUMENT_SPEC) | frozenset(["api_token"])

    def act(self, result: Dict[str, Any], params: Dict[str, Any], task_vars: Dict[str, Any]) -> Dict[str, Any]:
        try:
            validate_name(params["build_id"], "build_id")
            expiry(params)
        except NixforgeError as exc:
            return dict(result, failed=True, msg=exc.format())
        if self._task.check_mode:
            return dict(result, changed=True, actions=self.plan_text(params))

        def call(name: str, module_args: Dict[str, Any]) -> Dict[str, Any]:
            return self._execute_module(
                module_name="nixforge.images.%s" % name, module_args=module_args, task_vars=task_vars
            )

        check = BootCheck(call, params, tmp_root=C.DEFAULT_LOCAL_TMP)
        failure: Optional[str] = None
        previous = terminate_as_interrupt()
        try:
            check.run()
        except BootCheckFailed as exc:
            failure = str(exc)
        finally:
            errors = check.cleanup()["errors"]
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        result.update(check.result, changed=True, command=params["command"], expires_at=check.expires_at)
        if errors:
            failure = (failure + ". " if failure else "") + self.leak_message(params["build_id"], errors)
        if failure:
            result.update(failed=True, msg=failure)
        return result

    @staticmethod
    def plan_text(args: Dict[str, Any]) -> list:
        name = args["name"] or "nixforge-%s-boot" % args["build_id"]
        return [
            "register an SSH key for build %s" % args["build_id"],
            "create droplet %s in %s from image %s" % (name, args["region"], args["image"]),
            "log in over SSH and run the check command",
            "delete the droplet and the SSH key",
        ]

    @staticmethod
    def leak_message(build_id: str, errors: list) -> str:
        return (
            "Removing the boot check's resources failed (%s); remove them with: "
            "ansible-playbook playbooks/reap.yml -e nixforge_build_id=%s"
            % (
                "; ".join(errors),
                build_id,
            )
        )
