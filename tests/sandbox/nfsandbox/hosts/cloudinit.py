"""User data → what a host applies at boot, the way cloud-init would.

Parsing happens here, on the machine (PyYAML is in the venv, not in a minimal
Debian); applying happens inside the host at boot (guest/agent.py, run by two systemd
units ordered like cloud-init's stages), so commands really run as root in the host.

Supported, because our modules and roles (or the user data they merge) use them:
`#cloud-config` with `ssh_deletekeys`, `ssh_keys` (rsa/ecdsa/ed25519 private+public),
`ssh_genkeytypes`, `ssh_authorized_keys` (default user; root gets them behind cloud-init's
`disable_root` hint unless `disable_root: false`), `ssh_pwauth` (sshd's
PasswordAuthentication, in /etc/ssh/sshd_config.d/50-cloud-init.conf), `write_files`
(encoding, owner, permissions, append, defer), `bootcmd`, `runcmd`, `power_state`,
`hostname`, `packages` (names, or [name, version]) with `package_update` /
`package_upgrade` (apt through the sandbox's proxy, before the user's scripts, as
cloud-init's package-update-upgrade-install); plain `#!` scripts; gzip-compressed and
MIME multipart user data. Any other key is refused by name ("... is not supported by the
sandbox; ignored") in the daemon's log and in the host's /var/log/cloud-init.log. Host keys
missing from the user data are generated in the host at first boot (cloud-init's
`ssh_genkeytypes`, default rsa, ecdsa, ed25519).
"""

from __future__ import annotations

import base64
import email
import gzip
import json
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("nfsandbox.hosts.cloudinit")

GUEST_DIR = Path(__file__).parent / "guest"
KEY_TYPES = ("rsa", "ecdsa", "ed25519")
HANDLED = {
    "ssh_deletekeys",
    "ssh_keys",
    "ssh_genkeytypes",
    "ssh_authorized_keys",
    "disable_root",
    "write_files",
    "bootcmd",
    "runcmd",
    "power_state",
    "hostname",
    "ssh_pwauth",
    "packages",
    "package_update",
    "package_upgrade",
}


@dataclass
class GuestFile:
    path: str  # absolute path inside the host
    data: bytes = b""
    mode: int = 0o644
    symlink: str | None = None  # when set, a symlink to this target instead of a file


@dataclass
class Plan:
    default_user: str = "admin"
    config: dict[str, Any] = field(default_factory=dict)
    user_scripts: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    # keys from instance metadata (EC2 KeyName, a provider's project keys): cloud-init
    # installs them for the default user whatever the user data says
    metadata_keys: list[str] = field(default_factory=list)

    def to_guest(self) -> dict[str, Any]:
        """The JSON plan the in-host agent applies (everything decoded already)."""
        c = self.config
        out: dict[str, Any] = {"default_user": self.default_user, "user_scripts": self.user_scripts}
        keys = [str(k) for k in _as_list(c.get("ssh_authorized_keys"))]
        out["ssh_authorized_keys"] = keys + [k for k in self.metadata_keys if k not in keys]
        out["disable_root"] = bool(c.get("disable_root", True))
        out["ssh_deletekeys"] = bool(c.get("ssh_deletekeys", True))
        out["ssh_genkeytypes"] = [str(t) for t in _as_list(c.get("ssh_genkeytypes", list(KEY_TYPES)))]
        out["ssh_keys"] = ssh_keys(c.get("ssh_keys") or {})
        out["write_files"] = [_write_file(spec) for spec in _as_list(c.get("write_files"))]
        for key in ("bootcmd", "runcmd"):
            if c.get(key):
                out[key] = commands_script(c[key])
        if isinstance(c.get("power_state"), dict):
            out["power_state"] = {k: str(v) for k, v in c["power_state"].items() if k in ("mode", "delay", "message")}
        if c.get("hostname"):
            out["hostname"] = str(c["hostname"])
        if "ssh_pwauth" in c:
            out["ssh_pwauth"] = str(c["ssh_pwauth"]).lower() in ("true", "yes", "1")
        out["packages"] = [_package(p) for p in _as_list(c.get("packages"))]
        # cloud-init updates the package lists before installing anything
        out["package_update"] = bool(c.get("package_update")) or bool(out["packages"]) or bool(c.get("package_upgrade"))
        out["package_upgrade"] = bool(c.get("package_upgrade"))
        out["ignored"] = list(self.ignored)
        return out


def _package(spec: Any) -> str:
    """cloud-init's package entry for apt: ``name`` or ``[name, version]`` (``name=version``)."""
    if isinstance(spec, list) and len(spec) == 2:
        return "%s=%s" % (spec[0], spec[1])
    if isinstance(spec, (list, dict)):
        raise ValueError("user data: packages entries are names or [name, version], not %r" % (spec,))
    return str(spec)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def ssh_keys(spec: dict[str, Any]) -> dict[str, dict[str, str]]:
    """`ssh_keys: {ed25519_private: ..., ed25519_public: ...}` → {"ed25519": {...}}."""
    keys: dict[str, dict[str, str]] = {}
    for name, value in spec.items():
        ktype, _sep, part = str(name).rpartition("_")
        if ktype in KEY_TYPES and part in ("private", "public"):
            keys.setdefault(ktype, {})[part] = str(value)
        else:
            log.info("user data: ssh_keys.%s ignored (certificates and unknown types are not supported)", name)
    for ktype in [k for k, v in keys.items() if "private" not in v]:
        log.warning("user data: ssh_keys has %s_public without %s_private; ignored", ktype, ktype)
        del keys[ktype]
    return keys


def commands_script(commands: Any) -> str:
    """cloud-init's runcmd/bootcmd: strings run as shell lines, lists are quoted argv."""
    lines = ["#!/bin/sh"]
    for cmd in _as_list(commands):
        lines.append(shlex.join(str(a) for a in cmd) if isinstance(cmd, list) else str(cmd))
    return "\n".join(lines) + "\n"


def _write_file(spec: dict[str, Any]) -> dict[str, Any]:
    content = spec.get("content", "")
    raw = content.encode() if isinstance(content, str) else bytes(content)
    encoding = str(spec.get("encoding", "text/plain")).lower()
    if encoding in ("b64", "base64", "gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        raw = base64.b64decode(raw)
    if encoding.startswith("gz"):
        raw = gzip.decompress(raw)
    perms = spec.get("permissions", "0644")
    perms = format(perms, "o") if isinstance(perms, int) else str(perms)  # YAML may read 0644 as 420
    return {
        "path": str(spec["path"]),
        "content": base64.b64encode(raw).decode(),
        "permissions": perms,
        "owner": str(spec.get("owner", "root:root")),
        "append": bool(spec.get("append", False)),
        "defer": bool(spec.get("defer", False)),
    }


def parse(userdata: str | bytes | None, default_user: str = "admin") -> Plan:
    plan = Plan(default_user=default_user)
    if userdata is None:
        return plan
    data = userdata.encode() if isinstance(userdata, str) else bytes(userdata)
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    _part(plan, data, "")
    for key in plan.ignored:
        log.info("user data: %s is not supported by the sandbox; ignored", key)
    return plan


def _part(plan: Plan, data: bytes, content_type: str) -> None:
    text = data.decode("utf-8", errors="replace")
    head = text.lstrip()[:64].lower()
    if content_type == "multipart/mixed" or head.startswith(("content-type: multipart", "mime-version")):
        message = email.message_from_bytes(data)
        for sub in message.walk():
            if sub.is_multipart():
                continue
            payload = sub.get_payload(decode=True) or b""
            _part(plan, payload, sub.get_content_type())
    elif content_type == "text/cloud-config" or head.startswith("#cloud-config"):
        config = yaml.safe_load(text) or {}
        if not isinstance(config, dict):
            raise ValueError("user data: #cloud-config must be a YAML mapping")
        for key, value in config.items():
            if key in HANDLED:
                plan.config[key] = value  # later parts override, as cloud-init's default merge does
            else:
                plan.ignored.append(str(key))
    elif content_type == "text/x-shellscript" or head.startswith("#!"):
        plan.user_scripts.append(text)
    elif text.strip():
        plan.ignored.append(f"user data part {head.splitlines()[0] if head else content_type!r}")


def guest_files(plan: Plan) -> list[GuestFile]:
    """Files to place in a host's overlay before it boots."""
    units = ("nixforge-cloud-init.service", "nixforge-cloud-final.service")
    files = [
        GuestFile("/usr/lib/nixforge-cloud-init/agent.py", (GUEST_DIR / "agent.py").read_bytes()),
        GuestFile("/var/lib/nixforge-cloud-init/plan.json", json.dumps(plan.to_guest(), indent=1).encode(), mode=0o600),
        GuestFile("/usr/bin/cloud-init", (GUEST_DIR / "cloud-init").read_bytes(), mode=0o755),
    ]
    for unit in units:
        files.append(GuestFile(f"/etc/systemd/system/{unit}", (GUEST_DIR / unit).read_bytes()))
        files.append(
            GuestFile(f"/etc/systemd/system/multi-user.target.wants/{unit}", symlink=f"/etc/systemd/system/{unit}")
        )
    return files
