"""QEMU for droplets: which accelerator works, the droplet's disk, its command line.

KVM is used only where it really works. On some machines `/dev/kvm` exists but a guest
crawls or hangs under it (measured here: SeaBIOS and a one-sector boot program took 7 s
under KVM, 0.2 s under TCG, and Linux hung at "Probing EDD"). So the accelerator is
chosen by running the same tiny boot program (it writes `K` to the serial port and
exits QEMU through the isa-debug-exit device) under TCG and then under KVM: KVM wins
only if it finishes within twice TCG's time plus half a second; otherwise it is
stopped there and TCG is used. `NIXFORGE_SANDBOX_QEMU_ACCEL=kvm|tcg` forces a choice.

Disks: the stored image is never written. A compressed image is decompressed into the
droplet's folder; an uncompressed one is hard-linked there. Either is the read-only
backing file of a qcow2 overlay as large as the size's disk, which QEMU writes.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from ..cmd import run

log = logging.getLogger("nfsandbox.digitalocean.qemu")

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
ACCEL_ENV = "NIXFORGE_SANDBOX_QEMU_ACCEL"
PROBE_EXIT = 33  # isa-debug-exit: (value << 1) | 1 for the value 0x10 the program writes
GUEST_MEMORY_CAP_MB = 1024  # the sandbox machine is shared; the API still shows the size's memory
CHUNK = 1024 * 1024

# mov al,'K'; mov dx,0x3f8; out dx,al; mov al,0x10; out 0xf4,al; hlt; jmp $-1
PROBE_CODE = bytes([0xB0, 0x4B, 0xBA, 0xF8, 0x03, 0xEE, 0xB0, 0x10, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD])


class QemuMissing(RuntimeError):
    pass


def require() -> None:
    missing = [tool for tool in (QEMU, QEMU_IMG) if shutil.which(tool) is None]
    if missing:
        raise QemuMissing(
            f"{' and '.join(missing)} not installed: droplets of custom images boot under QEMU; "
            "install the Debian packages qemu-system-x86 and qemu-utils (`make deps`)"
        )


def probe_disk() -> bytes:
    disk = bytearray(512)
    disk[: len(PROBE_CODE)] = PROBE_CODE
    disk[510:512] = b"\x55\xaa"
    return bytes(disk)


def _probe_run(accel: str, disk: Path, timeout: float) -> float | None:
    """Seconds the probe took under `accel`, None if it failed or ran out of time."""
    argv = [QEMU, "-accel", accel, "-m", "16", "-nodefaults", "-display", "none", "-no-reboot"]
    argv += ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-drive", f"file={disk},format=raw,if=ide"]
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    return time.monotonic() - started if proc.returncode == PROBE_EXIT else None


def kvm_verdict(tcg_seconds: float, kvm_seconds: float | None) -> bool:
    """Whether KVM is worth using, from the two probe times (pure, for tests)."""
    return kvm_seconds is not None and kvm_seconds <= 2 * tcg_seconds + 0.5


class Accelerator:
    """The accelerator chosen once per emulator (the probe runs at the first droplet)."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.lock = threading.Lock()
        self.choice: str | None = None
        self.reason = ""

    def get(self) -> str:
        with self.lock:
            if self.choice is None:
                self.choice, self.reason = self._choose()
                log.info("droplets run under QEMU with %s (%s)", self.choice, self.reason)
            return self.choice

    def _choose(self) -> tuple[str, str]:
        forced = os.environ.get(ACCEL_ENV, "").strip()
        if forced in ("kvm", "tcg"):
            return forced, f"{ACCEL_ENV}={forced}"
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "tcg", "/dev/kvm is not usable"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        disk = self.work_dir / "accel-probe.img"
        disk.write_bytes(probe_disk())
        try:
            tcg = _probe_run("tcg", disk, timeout=60)
            if tcg is None:
                return "tcg", "the TCG probe failed (KVM not tried)"
            kvm = _probe_run("kvm", disk, timeout=2 * tcg + 0.5)
        finally:
            disk.unlink(missing_ok=True)
        timing = f"probe: tcg {tcg:.2f}s, kvm {'failed or too slow' if kvm is None else f'{kvm:.2f}s'}"
        return ("kvm" if kvm_verdict(tcg, kvm) else "tcg"), timing


def prepare_disk(stored: Path, fmt: str, compression: str | None, folder: Path, size_gb: int) -> Path:
    """The droplet's disk in `folder`: a qcow2 overlay over a copy (decompressed) or a hard
    link of the stored image, `size_gb` large. The stored file is only read."""
    base = folder / f"base.{fmt}"
    if compression is None:
        try:
            os.link(stored, base)
        except OSError:  # another file system: a copy
            shutil.copyfile(stored, base)
    else:
        opener = gzip.open if compression == "gzip" else bz2.open
        with opener(stored, "rb") as src, open(base, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    os.chmod(base, 0o444)
    disk = folder / "disk.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base), str(disk), f"{size_gb}G"])
    return disk


def command(
    name: str, accel: str, memory_mb: int, disk: Path, console: Path, address: str, mac: str, serial: int
) -> list[str]:
    """The QEMU command line of a droplet (run inside its network namespace)."""
    nic = f"user,model=virtio-net-pci,mac={mac},hostfwd=tcp:{address}:22-:22"
    return [
        QEMU,
        "-name",
        name,
        "-accel",
        accel,
        "-m",
        str(min(memory_mb, GUEST_MEMORY_CAP_MB)),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        f"file:{console}",
        "-drive",
        f"file={disk},if=virtio,format=qcow2",
        "-nic",
        nic,
        # entropy from the host: without it the guest's first getrandom() (the SSH server)
        # waits seconds for the kernel's pool under TCG
        "-device",
        "virtio-rng-pci",
        # what cloud-init's DigitalOcean data source checks before it asks the metadata service
        "-smbios",
        f"type=1,manufacturer=DigitalOcean,product=Droplet,serial={serial}",
    ]
