# -*- coding: utf-8 -*-
# Private to this collection: the boot check's SSH probe, diagnosis and cost; no stable interface.
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How far a freshly created droplet got on its way to an SSH login, and what its check cost.

Runs on the controller (the ``do_boot_check`` action). Each probe climbs the same ladder
and the highest rung ever reached is what a failure reports, because "no SSH within 600 s"
alone does not tell a broken network set-up from a broken init or a refused key:

    address  the droplet has a public IPv4 address
    tcp      a TCP connection to port 22 was accepted
    banner   an SSH server greeted (``SSH-2.0-...``)
    login    OpenSSH logged in with the build's key and the pinned host key
"""

from __future__ import annotations

import math
import re
import socket
import subprocess
from typing import Callable, Dict, List, Optional, Sequence, Tuple

STAGES = ("created", "address", "tcp", "banner", "login")
SSH_PORT = 22
# DigitalOcean bills droplets per second since 2026-01-01, at least 60 s or USD 0.01.
MINIMUM_BILLED_SECONDS = 60
MINIMUM_CHARGE_USD = 0.01
HOST_KEY_MISMATCH = re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed")


class Ladder:
    """The highest stage reached and the last error seen (for the failure message)."""

    def __init__(self) -> None:
        self.reached = "created"
        self.address: Optional[str] = None
        self.banner: Optional[str] = None
        self.last_error = ""

    def reach(self, stage: str) -> None:
        if STAGES.index(stage) > STAGES.index(self.reached):
            self.reached = stage

    def describe(self) -> str:
        """What was reached, in words, for the failure message."""
        if self.reached == "created":
            return "the droplet never got a public address"
        text = "the droplet got the address %s" % self.address
        if self.reached == "address":
            return text + ", but TCP port 22 never accepted a connection"
        if self.reached == "tcp":
            return (
                text + " and TCP port 22 accepted connections, but no SSH server ever greeted"
                " (the image's init or its SSH server did not start)"
            )
        text += ", its SSH server answered (%s)" % (self.banner or "SSH banner")
        if self.reached == "banner":
            return (
                text
                + ", but the login as root with the build's key failed"
                + (" (last error: %s)" % self.last_error if self.last_error else "")
            )
        return text + " and the login worked"


def tcp_and_banner(address: str, timeout: float, port: int = SSH_PORT) -> Tuple[bool, Optional[str]]:
    """(whether TCP port ``port`` accepted a connection, the SSH banner line or None)."""
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError:
        return False, None
    with sock:
        sock.settimeout(timeout)
        data = b""
        try:
            while b"\n" not in data and len(data) < 512:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    line = data.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    return True, (line if line.startswith("SSH-") else None)


def ssh_argv(
    address: str, key_file: str, known_hosts: str, command: str, connect_timeout: int, user: str = "root"
) -> List[str]:
    """OpenSSH with the build's key only and the pinned host key only (checking stays on)."""
    return [
        "ssh",
        "-i",
        key_file,
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UserKnownHostsFile=%s" % known_hosts,
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-o",
        "ConnectTimeout=%d" % connect_timeout,
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
        "-o",
        "LogLevel=ERROR",
        "-p",
        str(SSH_PORT),
        "%s@%s" % (user, address),
        "--",
        command,
    ]


def run_ssh(
    argv: Sequence[str], timeout: float, run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
) -> Tuple[int, str, str]:
    """``(exit status, stdout, stderr)``; a command that outlives ``timeout`` is status 124."""
    try:
        done = run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return 124, "", "timed out after %d s" % timeout
    return done.returncode, done.stdout or "", done.stderr or ""


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def known_hosts_line(address: str, host_public_key: str) -> str:
    """The pinned entry: the address and the type and data of the host key (no comment)."""
    return "%s %s\n" % (address, " ".join(host_public_key.split()[:2]))


def billed_seconds(seconds: float) -> int:
    return max(MINIMUM_BILLED_SECONDS, math.ceil(max(0.0, seconds)))


def check_cost(price_hourly: Optional[float], seconds: float) -> Optional[float]:
    """USD DigitalOcean charges for a droplet that lived ``seconds`` (None: price unknown)."""
    if price_hourly is None:
        return None
    return round(max(MINIMUM_CHARGE_USD, float(price_hourly) * billed_seconds(seconds) / 3600.0), 6)


def summary_numbers(
    started: float, logged_in: Optional[float], gone: float, price: Optional[float], active: Optional[float] = None
) -> Dict[str, object]:
    """The figures the pipeline summary prints. ``started``: the create request (billing starts);
    ``active``: the droplet became active (its VM started: the boot is counted from there)."""
    lifetime = max(0.0, gone - started)
    booting_since = active if active is not None else started
    return {
        "boot_seconds": round(logged_in - booting_since, 1) if logged_in is not None else None,
        "create_seconds": round(active - started, 1) if active is not None else None,
        "droplet_seconds": round(lifetime, 1),
        "billed_seconds": billed_seconds(lifetime),
        "price_per_hour": price,
        "cost": check_cost(price, lifetime),
    }
