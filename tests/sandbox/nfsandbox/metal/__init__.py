"""Equinix Metal emulator: the sandbox provider (loaded by the daemon as `nfsandbox.metal`).

Pieces: `catalog.py` (plans, metros, facilities, operating systems),
`api.py` (state machine and request handling), `http.py` (HTTPS front).
This module wires them to the sandbox: TLS from the sandbox CA, the port reserved for
"metal", and devices booted as real sandbox hosts through the HostPool.

What a device's host gets at boot, as on Metal:
- root's authorized_keys: the device's SSH keys (project keys named in
  `project_ssh_keys`, or all project and user keys when none is named), whatever the
  user data says;
- Debian/Ubuntu: the user data as cloud-init would apply it (`#cloud-config`, scripts,
  multipart);
- NixOS (`nixos_*`): the sandbox hosts are Debian, so the NixOS module in the user data
  cannot be evaluated. The host gets the user data at /etc/nixos/packet/userdata.nix
  (where Metal's NixOS images read it), the SSH host key from the block that the
  module's activation script would copy (see plugins/module_utils/_metal/_client.py), and the
  keys listed in `users.users.root.openssh.authorizedKeys.keys`. Nothing else of the
  NixOS configuration is applied.

Published in state.json `endpoints` (and by `sandboxctl env`): `metal_endpoint`
(127.0.0.1:PORT, paths at the root), `metal_api_url` (https://127.0.0.1:PORT/metal/v1, the
real API's layout), `metal_token`, `metal_project_id`, `metal_ca_bundle`, and the same as
METAL_API_URL / METAL_AUTH_TOKEN / METAL_PROJECT_ID for clients (REQUESTS_CA_BUNDLE comes
from the sandbox CA).

Fault knobs: control API `POST /faults/metal` with a JSON object (tests: `set_faults`). A
call replaces the whole table; `{}` restores the defaults. Counters count down per
request (or per device) and stop at 0:

    {"fail_provisioning": 1,            # next N devices end in state "failed"
     "throttle": 3,                     # next N requests: 429 {"errors": [...]}
     "throttle_match": "^POST /projects/[^/]+/devices$",   # optional regex on "METHOD /path"
     "retry_after": 1,                  # Retry-After header of the 429s (0: none)
     "server_error": 2,                 # next N requests: 5xx {"errors": [...]}
     "server_error_status": 503,        # default 500
     "server_error_match": "^DELETE ",  # optional regex on "METHOD /path"
     "provision_delay": 5.0,            # seconds every device spends provisioning (default 0.5)
     "deprovision_delay": 0.5}          # seconds a deleted device spends deprovisioning

Paths in "METHOD /path" have the /metal/v1 prefix and the query removed. Faults apply
after the token check (a bad token always gets its 401).

Debugging aid, not part of the Metal API: `GET /_sandbox/exchanges` (X-Auth-Token
required) lists the last requests and answers, `DELETE` clears them; the contract test
validates them against the Metal OpenAPI document.
"""

from __future__ import annotations

import email.mime.multipart
import email.mime.text
import logging
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

from ..providers import EmulatorProvider
from .api import Device, MetalAPI
from .catalog import OPERATING_SYSTEMS
from .http import MetalHTTPServer

log = logging.getLogger("nfsandbox.metal")

NIXOS_USERDATA_PATH = "/etc/nixos/packet/userdata.nix"
HOST_KEY_BEGIN = "# nixforge-host-key-begin"
HOST_KEY_END = "# nixforge-host-key-end"
KEY_TYPES = ("rsa", "ecdsa", "ed25519")


class _PoolBackend:
    """Devices become sandbox hosts."""

    def __init__(self, sandbox: Any) -> None:
        self.sandbox = sandbox

    def boot(self, device: Device, on_poweroff: Callable[[], None]) -> Any:
        distro = OPERATING_SYSTEMS[device.operating_system][1]
        userdata = device_userdata(distro, device.userdata, device.authorized_keys)
        return self.sandbox.pool.boot(
            owner=f"metal:{device.id}",
            userdata=userdata,
            default_user="root",
            on_poweroff=on_poweroff,
            arch=device.architecture,
            suite="bookworm",  # the sandbox's Debian; Metal's debian_11/ubuntu/nixos run on it too
        )

    def stop(self, handle: Any) -> None:
        self.sandbox.pool.stop(handle)

    def network(self, handle: Any) -> tuple[str, int]:
        return self.sandbox.gateway, self.sandbox.instance.prefixlen


class Provider(EmulatorProvider):
    name = "metal"
    title = "Metal"

    def __init__(self, sandbox: Any) -> None:
        super().__init__(sandbox)
        self.api: MetalAPI | None = None
        self.http: MetalHTTPServer | None = None

    def start(self) -> dict[str, Any]:
        if self.sandbox.ca is None:
            raise RuntimeError("the Metal emulator needs the sandbox CA (HTTPS only)")
        context = self.sandbox.ca.server_context("127.0.0.1", "localhost")
        self.api = MetalAPI(_PoolBackend(self.sandbox))
        state_dir = getattr(self.sandbox, "state_dir", None)
        log_path = Path(state_dir) / "exchanges" / "metal.jsonl" if state_dir else None
        self.http = MetalHTTPServer(self.api, context, "127.0.0.1", self.sandbox.port("metal"), log_path=log_path)
        self.http.start()
        host, port = self.http.address
        endpoint = f"{host}:{port}"
        log.info("Metal emulator listening on https://%s (project %s)", endpoint, self.api.default_project_id)
        return {
            # packet-python: Manager.end_point = metal_endpoint (paths at the root) or
            # metal_api_url without the scheme (paths under /metal/v1, like the real API)
            "metal_endpoint": endpoint,
            "metal_api_url": f"https://{endpoint}/metal/v1",
            "metal_token": self.api.token,
            "metal_project_id": self.api.default_project_id,
            "metal_ca_bundle": str(self.sandbox.ca.bundle),
            # exported as they are by `sandboxctl env`: what metal_device reads
            "METAL_API_URL": f"https://{endpoint}/metal/v1",
            "METAL_AUTH_TOKEN": self.api.token,
            "METAL_PROJECT_ID": self.api.default_project_id,
        }


# -- user data -------------------------------------------------------------------------


def device_userdata(distro: str, userdata: str, authorized_keys: list[str]) -> str:
    """What the device's host boots with: the user data plus what Metal itself installs."""
    if distro == "nixos":
        return _nixos_as_cloud_config(userdata, authorized_keys)
    vendor: dict[str, Any] = {"disable_root": False}
    if authorized_keys:
        vendor["ssh_authorized_keys"] = list(authorized_keys)
    text = userdata or ""
    if not text.strip():
        return _cloud_config(vendor)
    if text.lstrip().startswith("#cloud-config"):
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            log.warning("device user data is not valid YAML (%s); only Metal's keys are applied", exc)
            return _cloud_config(vendor)
        if not isinstance(config, dict):
            log.warning("device #cloud-config is not a mapping; only Metal's keys are applied")
            return _cloud_config(vendor)
        keys = [str(k) for k in config.get("ssh_authorized_keys") or []]
        config["ssh_authorized_keys"] = keys + [k for k in authorized_keys if k not in keys]
        config["disable_root"] = False
        return _cloud_config(config)
    # A script (or anything else): Metal's keys in a cloud-config part next to it.
    message = email.mime.multipart.MIMEMultipart()
    message.attach(email.mime.text.MIMEText(_cloud_config(vendor), "cloud-config"))
    subtype = "x-shellscript" if text.startswith("#!") else "plain"
    message.attach(email.mime.text.MIMEText(text, subtype))
    return message.as_string()


def _cloud_config(config: dict[str, Any]) -> str:
    return "#cloud-config\n" + yaml.safe_dump(config, default_flow_style=False, sort_keys=True)


def _nixos_as_cloud_config(userdata: str, authorized_keys: list[str]) -> str:
    config: dict[str, Any] = {"disable_root": False}
    keys = list(authorized_keys)
    for key in nixos_root_keys(userdata or ""):
        if key not in keys:
            keys.append(key)
    if keys:
        config["ssh_authorized_keys"] = keys
    host_key = nixos_host_key(userdata or "")
    if host_key is not None:
        kind, private, public = host_key
        config["ssh_deletekeys"] = True
        config["ssh_genkeytypes"] = []
        config["ssh_keys"] = {f"{kind}_private": private, f"{kind}_public": public}
    config["write_files"] = [
        {"path": NIXOS_USERDATA_PATH, "content": userdata or "", "permissions": "0600", "owner": "root:root"}
    ]
    return _cloud_config(config)


def nixos_root_keys(userdata: str) -> list[str]:
    """The strings of `users.users.root.openssh.authorizedKeys.keys = [ ... ];`."""
    match = re.search(r"users\.users\.root\.openssh\.authorizedKeys\.keys\s*=\s*\[(.*?)\]\s*;", userdata, re.S)
    if not match:
        return []
    return [re.sub(r"\\(.)", r"\1", s) for s in re.findall(r'"((?:[^"\\]|\\.)*)"', match.group(1))]


def nixos_host_key(userdata: str) -> tuple[str, str, str] | None:
    """(type, private, public) from the comment block the activation script copies."""
    lines = userdata.splitlines()
    kind, body, inside = None, [], False
    for line in lines:
        if line.startswith(HOST_KEY_BEGIN):
            inside = True
            parts = line.split()
            kind = parts[-1] if parts[-1] in KEY_TYPES else "ed25519"
            continue
        if line.startswith(HOST_KEY_END):
            break
        if inside:
            body.append(re.sub(r"^# ?", "", line))
    if not inside or not body or kind is None:
        return None
    private = "\n".join(body).strip() + "\n"
    public = _public_of(private)
    if public is None:
        log.warning("NixOS user data: the host key block does not hold a usable private key; ignored")
        return None
    return kind, private, public


def _public_of(private: str) -> str | None:
    fd, path = tempfile.mkstemp(prefix="metal-hostkey-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(private)
        proc = subprocess.run(["ssh-keygen", "-y", "-f", path], capture_output=True, text=True, check=False)
    finally:
        os.unlink(path)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None
