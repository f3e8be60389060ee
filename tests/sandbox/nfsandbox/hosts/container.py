"""One builder host: an overlay over the base image, booted with systemd-nspawn.

The only nspawn form that works on these machines (PID 1 is not systemd, /run is not
a tmpfs, cgroup v1): nspawn runs in a mount namespace of its own where /run is a fresh
tmpfs, the host's netns is bound to a file outside /run, and the overlay is mounted.
Because all three mounts exist only in that namespace, they vanish with the nspawn
process: a SIGKILLed sandbox leaves no mount behind on the machine.

Propagation is `slave`, not `private`: a private copy of the machine's mount table
would pin the /run/netns bind mounts of *other* hosts, keeping their namespaces and
veths alive after `ip netns del`. As a slave, the machine's unmounts reach this copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .. import procs
from ..config import Instance
from .cloudinit import GuestFile

log = logging.getLogger("nfsandbox.hosts.container")

# $1 netns  $2 netns file  $3 lower  $4 upper  $5 work  $6 root  $7 machine name
# $8 (optional) one more nspawn option: --bind=/dev/kvm for a host with KVM
LAUNCH = r"""
set -e
mount --bind "/run/netns/$1" "$2"
umount -l /run/netns 2>/dev/null || true  # drop this copy's references to other hosts' netns
mount -t overlay overlay -o "lowerdir=$3,upperdir=$4,workdir=$5" "$6"
mount -t tmpfs -o mode=0755 tmpfs /run
exec systemd-nspawn --quiet -D "$6" -M "$7" --register=no --keep-unit --boot --console=passive \
    --resolv-conf=off --timezone=off --link-journal=no --network-namespace-path="$2" ${8:+"$8"}
"""

EXIT_REBOOT = 133  # nspawn's exit status when the container asked for a reboot


class BootError(RuntimeError):
    pass


class Container:
    def __init__(self, inst: Instance, index: int, lower: Path):
        self.inst = inst
        self.index = index
        self.name = inst.host_name(index)
        self.ip = inst.host_ip(index)
        self.lower = lower
        self.dir = inst.work_dir / "hosts" / self.name
        self.upper = self.dir / "upper"
        self.proc: subprocess.Popen | None = None
        self.kvm = False  # bind the machine's /dev/kvm into the host

    @property
    def cgroup(self) -> str:
        return f"{self.inst.cgroup_name}/{self.name}"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    # -- preparation ---------------------------------------------------------------
    def prepare(self, files: list[GuestFile]) -> None:
        """A fresh upper layer holding `files` (written before boot, seen as the host's)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        for sub in ("upper", "work", "root"):
            (self.dir / sub).mkdir(parents=True)
        (self.dir / "netns").touch()  # bind-mount target for the netns (outside /run)
        for f in files:
            target = self.upper / f.path.lstrip("/")
            self._mkdirs(target.parent)
            if f.symlink:
                target.symlink_to(f.symlink)
            else:
                target.write_bytes(f.data)
                target.chmod(f.mode)

    def _mkdirs(self, path: Path) -> None:
        # parents that exist in the base keep its modes (e.g. /root is 0700): copy them
        missing = []
        while not path.exists():
            missing.append(path)
            path = path.parent
        for p in reversed(missing):
            p.mkdir()
            lower = self.lower / p.relative_to(self.upper)
            mode = lower.stat().st_mode & 0o7777 if lower.is_dir() else 0o755
            p.chmod(mode)

    def read_file(self, path: str) -> str | None:
        """A file as the host sees it right now (upper layer first, then the base)."""
        for layer in (self.upper, self.lower):
            p = layer / path.lstrip("/")
            if p.exists():
                return p.read_text()
        return None

    # -- running -------------------------------------------------------------------
    def launch(self, records: procs.Records) -> None:
        # the shell joins the host's cgroup, then becomes unshare, then nspawn (same PID)
        script = procs.join_cgroup_shell(self.cgroup)
        script += '\nexec unshare --mount --propagation slave -- sh -c "$NFS_LAUNCH" launch "$@"\n'
        args = [self.name, str(self.dir / "netns"), str(self.lower), str(self.upper), str(self.dir / "work")]
        args += [str(self.dir / "root"), self.name]
        if self.kvm:
            args.append("--bind=/dev/kvm")
        with open(self.console_log, "ab") as out:
            self.proc = subprocess.Popen(
                ["sh", "-c", script, "launch", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                env={**os.environ, "NFS_LAUNCH": LAUNCH},
            )
        records.put_pid("pid", self.name, self.proc.pid)

    def wait_ssh(self, timeout: float) -> float:
        """Wait until sshd answers with its banner; return the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc is None or self.proc.poll() is not None:
                raise BootError(f"{self.name} stopped while booting; console:\n{self.console_tail()}")
            try:
                with socket.create_connection((self.ip, 22), timeout=1) as s:
                    s.settimeout(2)
                    if s.recv(64).startswith(b"SSH-"):
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.05)
        raise BootError(f"{self.name}: no SSH on {self.ip}:22 after {timeout}s; console:\n{self.console_tail()}")

    def console_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no console log)"

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait()

    def terminate(self, grace: float = 10.0) -> None:
        """Power off like a cloud terminate (nspawn turns SIGTERM into an orderly
        poweroff of the container) for up to `grace` seconds, then kill whatever of
        the host is left (its whole cgroup) and remove its cgroups."""
        if grace > 0 and self.proc and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(grace)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                log.warning("%s did not power off within %ss; killing it", self.name, grace)
        left = procs.kill_cgroup(self.cgroup)
        if left:
            log.error("%s: processes %s survived SIGKILL", self.name, sorted(left))
        if self.proc:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                log.error("%s: nspawn (pid %s) did not exit", self.name, self.proc.pid)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
