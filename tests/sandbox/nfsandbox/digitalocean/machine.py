"""A droplet that really runs: its image booted under QEMU in a network namespace.

Each droplet takes an address index from the host pool (so no builder host gets its
address) and a namespace like a host's (`nfsN-hI`, veth on the instance bridge, its
public address on eth0). In it run:
- the metadata service (metadata.py, a small Python process) on 169.254.169.254:80,
  an address put on the namespace's `lo`: QEMU's user networking NATs the guest's
  connections to the QEMU process's namespace, so the guest reaches exactly this one;
- QEMU (qemu.py) with user networking, `hostfwd` of <public address>:22 to the guest's
  port 22, the serial console written to `<state dir>/droplets/<id>.console.log`.
Both PIDs are recorded (procs.Records, `pid.droplet<id>-qemu` / `-metadata`) and both run
in the daemon's cgroup, so `sandboxctl down` finds them even after a daemon crash.
`stop()` kills QEMU and the metadata server by PID, removes the namespace, the disk
overlay and the folder, and frees the address; it may run at any point of `boot()`.
The console log stays (a debugging aid, removed by `sandboxctl down`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cmd import run
from . import metadata, qemu

log = logging.getLogger("nfsandbox.digitalocean.machine")

METADATA_ADDRESS = "169.254.169.254"
LISTEN_TIMEOUT = 120.0  # QEMU binds its hostfwd port while it starts; a guard, not a guess
SERVER = Path(metadata.__file__).resolve()


class Gone(Exception):
    """The droplet was deleted while it was booting."""


@dataclass
class MachineSpec:
    droplet_id: int
    name: str
    region: str
    memory_mb: int
    disk_gb: int
    image_path: Path
    image_format: str
    image_compression: str | None
    public_keys: list[str]
    user_data: str | None
    tags: list[str] = field(default_factory=list)


class Machines:
    """What droplets need of the sandbox instance: `pool` (address indexes), `network`,
    `records`, `instance`; files under `work_dir`, consoles under `state_dir`."""

    def __init__(self, sandbox: Any, work_dir: Path) -> None:
        self.pool = sandbox.pool
        self.network = sandbox.network
        self.records = sandbox.records
        self.inst = sandbox.instance
        self.work_dir = work_dir / "droplets"
        self.console_dir = Path(sandbox.state_dir) / "droplets"
        self.accel = qemu.Accelerator(work_dir)

    def create(self, spec: MachineSpec) -> Machine:
        qemu.require()
        index = self.pool.reserve(f"droplet-{spec.droplet_id}")
        return Machine(self, spec, index)


class Machine:
    def __init__(self, owner: Machines, spec: MachineSpec, index: int) -> None:
        inst = owner.inst
        self.owner, self.spec, self.index = owner, spec, index
        self.netns = inst.host_name(index)
        self.address = inst.host_ip(index)
        self.gateway = inst.gateway
        self.netmask = str(inst.network.netmask)
        ident = spec.droplet_id
        self.mac = "02:00:%02x:%02x:%02x:%02x" % tuple(ident.to_bytes(4, "big"))
        self.folder = owner.work_dir / str(ident)
        self.console = owner.console_dir / f"{ident}.console.log"
        self.lock = threading.RLock()
        self.closed = False
        self.accel: str | None = None
        self.qemu: subprocess.Popen | None = None
        self.server: subprocess.Popen | None = None
        self.boot_seconds: float | None = None
        self.disk: Path | None = None
        self.stopped = False

    @property
    def record(self) -> str:
        return f"droplet{self.spec.droplet_id}"

    # -- boot ------------------------------------------------------------------------
    def _step(self, what: str, fn: Any, *args: Any) -> Any:
        with self.lock:
            if self.closed:
                raise Gone(what)
            return fn(*args)

    def boot(self) -> None:
        """Disk, namespace, metadata service, QEMU; returns once QEMU runs (its hostfwd
        port accepts). Raises Gone if stop() came first, anything else on failure."""
        started = time.monotonic()
        self._step("disk", self._disk)
        self._step("namespace", self._namespace)
        self._step("metadata", self._metadata)
        accel = self.owner.accel.get()  # outside the lock: the first probe takes a while
        self._step("qemu", self._qemu, accel)
        self._wait_listening()
        self.boot_seconds = round(time.monotonic() - started, 2)
        log.info("droplet %s: QEMU (%s) runs at %s", self.spec.droplet_id, accel, self.address)

    def _disk(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.console.parent.mkdir(parents=True, exist_ok=True)
        s = self.spec
        self.disk = qemu.prepare_disk(s.image_path, s.image_format, s.image_compression, self.folder, s.disk_gb)

    def _namespace(self) -> None:
        self.owner.records.put("netns", self.netns, netns=self.netns, ip=self.address, dir=str(self.folder))
        self.owner.network.add_host(self.index)
        run(["ip", "-n", self.netns, "addr", "add", f"{METADATA_ADDRESS}/32", "dev", "lo"])

    def metadata_document(self) -> dict[str, Any]:
        s = self.spec
        interface = {"ip_address": self.address, "netmask": self.netmask, "gateway": self.gateway, "mac": self.mac}
        return metadata.document(s.droplet_id, s.name, s.region, s.public_keys, s.user_data, interface, s.tags)

    def _metadata(self) -> None:
        doc = self.folder / "metadata.json"
        doc.write_text(json.dumps(self.metadata_document()))
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-I", str(SERVER)]
        argv += ["--listen", f"{METADATA_ADDRESS}:80", str(doc)]
        with open(self.folder / "metadata.log", "ab") as err:
            self.server = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, start_new_session=True
            )
        self.owner.records.put_pid("pid", f"{self.record}-metadata", self.server.pid)
        assert self.server.stdout is not None
        if self.server.stdout.readline().strip() != b"ready":  # EOF: it died
            raise RuntimeError(f"the metadata service did not start: {self._tail('metadata.log')}")

    def _qemu(self, accel: str) -> None:
        s = self.spec
        assert self.disk is not None
        argv = qemu.command(
            f"droplet-{s.droplet_id}", accel, s.memory_mb, self.disk, self.console, self.address, self.mac, s.droplet_id
        )
        self.accel = accel
        with open(self.folder / "qemu.log", "ab") as err:
            self.qemu = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        self.owner.records.put_pid("pid", f"{self.record}-qemu", self.qemu.pid)

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while time.monotonic() < deadline:
            with self.lock:
                if self.closed:
                    raise Gone("qemu")
                proc = self.qemu
            if proc is None or proc.poll() is not None:
                raise RuntimeError(f"QEMU exited while starting: {self._tail('qemu.log')}")
            try:
                with socket.create_connection((self.address, 22), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"QEMU did not listen on {self.address}:22 within {LISTEN_TIMEOUT:.0f}s")

    def _tail(self, name: str) -> str:
        try:
            return (self.folder / name).read_text(errors="replace")[-2000:].strip() or "(nothing logged)"
        except OSError:
            return "(no log)"

    # -- running ---------------------------------------------------------------------
    def wait(self) -> int | None:
        """Until QEMU exits (None if it never started)."""
        proc = self.qemu
        return proc.wait() if proc is not None else None

    def stop(self) -> None:
        """Everything of the droplet goes but its console log. Idempotent."""
        with self.lock:
            self.closed = True
            if self.stopped:
                return
            self.stopped = True
            for proc, kind in ((self.qemu, "qemu"), (self.server, "metadata")):
                if proc is not None:
                    _kill(proc)
                self.owner.records.drop("pid", f"{self.record}-{kind}")
            self.owner.network.del_host(self.index)
            self.owner.records.drop("netns", self.netns)
            shutil.rmtree(self.folder, ignore_errors=True)
            self.owner.pool.release(self.index)

    def view(self) -> dict[str, Any]:
        """For resources() and the emulator's debugging view."""
        alive = [(k, p) for k, p in (("qemu", self.qemu), ("metadata", self.server)) if p and p.poll() is None]
        return {
            "netns": self.netns,
            "address": self.address,
            "accel": self.accel,
            "console": str(self.console),
            "processes": {k: p.pid for k, p in alive},
            "boot_seconds": self.boot_seconds,
        }


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM (QEMU exits at once on it), SIGKILL if it is still there."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(5)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()
