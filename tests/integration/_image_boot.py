"""Boot a DigitalOcean disk image by hand under QEMU, as a droplet, with a metadata service.

Used by tests/integration/test_sandbox_image.py. Everything runs inside a network
namespace of its own, where 169.254.169.254 is an address on the loopback interface:
QEMU's user networking (slirp) makes the guest's connections from the QEMU process, so
the guest's `http://169.254.169.254/metadata/v1/...` reaches the metadata server
listening there, and `hostfwd` brings a port of that namespace's loopback to the
guest's port 22. The disk boots from itself (SeaBIOS, the image's own boot loader: no
`-kernel`) and is opened with `-snapshot` (the file is never written).

Every process started here is stopped by its PID and the namespace is deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

METADATA_ADDRESS = "169.254.169.254"
SSH_PORT = 2222
# Upper bound for a whole boot to reach a console line: a safety net that fails the test
# when the guest hangs, not a guess of how long booting takes (the waits end as soon as
# the line appears, or QEMU exits).
BOOT_LIMIT = 900.0

# A metadata service of DigitalOcean's shape for one droplet: files under
# /metadata/v1/ from a directory, served on 169.254.169.254:80 in the namespace. It
# prints "ready" once it listens, so the caller waits for exactly that.
METADATA_SERVER = r"""
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer((sys.argv[2], 80), handler)
print("ready", flush=True)
server.serve_forever()
"""


def ns_exec(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@contextlib.contextmanager
def metadata_namespace() -> Iterator[str]:
    """A network namespace with lo up and 169.254.169.254/32 on it; deleted at the end."""
    ns = "nfimg-" + secrets.token_hex(4)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(ns_exec(ns, ["ip", "link", "set", "lo", "up"]), check=True)
        subprocess.run(ns_exec(ns, ["ip", "addr", "add", METADATA_ADDRESS + "/32", "dev", "lo"]), check=True)
        yield ns
    finally:
        left = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout.split()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        assert not left, f"processes left in {ns}: {left}"


def write_metadata(directory: Path, public_keys: str, hostname: str, user_data: str) -> Path:
    v1 = directory / "metadata" / "v1"
    v1.mkdir(parents=True, exist_ok=True)
    (v1 / "public-keys").write_text(public_keys)
    (v1 / "hostname").write_text(hostname)
    (v1 / "user-data").write_text(user_data)
    return directory


def stop(proc: subprocess.Popen) -> None:
    """Stop one process we started, by its PID, and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def metadata_server(ns: str, root: Path) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(
        ns_exec(ns, [sys.executable, "-c", METADATA_SERVER, str(root), METADATA_ADDRESS]),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == "ready", f"the metadata server did not start: {line!r}"
        yield proc
    finally:
        stop(proc)


def kvm_device() -> bool:
    """/dev/kvm exists and opens (it may still not run guests: see choose_accel)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


@dataclass
class Guest:
    proc: subprocess.Popen
    console: Path
    ns: str

    def text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def wait_for(self, *patterns: str, limit: float = BOOT_LIMIT) -> str:
        """Wait until one of `patterns` (regular expressions) is on the console; return it.
        Fails when QEMU exits first, or after `limit` seconds (a hang)."""
        compiled = [re.compile(p, re.MULTILINE) for p in patterns]
        started = time.monotonic()
        while True:
            text = self.text()
            for pattern in compiled:
                if pattern.search(text):
                    return pattern.pattern
            if self.proc.poll() is not None:
                raise AssertionError(f"QEMU exited ({self.proc.returncode}) before {patterns}:\n{text[-4000:]}")
            if time.monotonic() - started > limit:
                raise AssertionError(f"no {patterns} on the console after {limit:.0f}s:\n{text[-4000:]}")
            time.sleep(0.2)

    def ssh(self, key: Path, known_hosts: Path, command: str, connect_timeout: int = 60) -> subprocess.CompletedProcess:
        """ssh as root through the forwarded port; ConnectTimeout also bounds the SSH
        handshake (a guest that never answers holds the forwarded connection open)."""
        argv = ["ssh", "-F", "/dev/null", "-i", str(key), "-p", str(SSH_PORT)]
        argv += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        argv += ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", f"ConnectTimeout={connect_timeout}"]
        argv += ["root@127.0.0.1", command]
        return subprocess.run(ns_exec(self.ns, argv), capture_output=True, text=True, timeout=120, check=False)


@contextlib.contextmanager
def boot(ns: str, disk: Path, console: Path, accel: str = "tcg") -> Iterator[Guest]:
    """Boot `disk` (qcow2) from itself under QEMU in namespace `ns`, console to a file."""
    argv = ["qemu-system-x86_64", "-accel", accel, "-m", "512", "-smp", "1"]
    argv += ["-display", "none", "-monitor", "none", "-serial", f"file:{console}", "-snapshot"]
    argv += ["-drive", f"file={disk},if=virtio,format=qcow2"]
    argv += ["-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{SSH_PORT}-:22", "-device", "virtio-net-pci,netdev=n0"]
    proc = subprocess.Popen(ns_exec(ns, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield Guest(proc, console, ns)
    finally:
        stop(proc)


def choose_accel(ns: str, disk: Path, workdir: Path, first_line: str) -> str:
    """ "kvm" when it really runs this disk, else "tcg".

    On some machines /dev/kvm opens but Linux guests hang early (GRUB still runs) or QEMU
    aborts. So boot the disk under TCG until `first_line` (a line Linux prints) is on its
    console, then under KVM with
    that same time as the limit (twice, for noise): KVM, when it works, is never slower
    than TCG. No /dev/kvm: TCG without probing. NIXFORGE_QEMU_ACCEL overrides."""
    forced = os.environ.get("NIXFORGE_QEMU_ACCEL")
    if forced:
        return forced
    if not kvm_device():
        return "tcg"
    started = time.monotonic()
    with boot(ns, disk, workdir / "probe-tcg.log", "tcg") as guest:
        guest.wait_for(first_line)
    tcg_seconds = time.monotonic() - started
    started = time.monotonic()
    with boot(ns, disk, workdir / "probe-kvm.log", "kvm") as guest:
        try:
            guest.wait_for(first_line, limit=2 * tcg_seconds)
        except AssertionError:
            return "tcg"
    return "kvm"
