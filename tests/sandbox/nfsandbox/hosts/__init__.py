"""HostPool: boots builder hosts on demand for the emulated providers.

Providers (EC2, Metal, ...) call it from their own threads, so every change of the
pool's bookkeeping happens under one lock; the slow parts (overlay, boot, waiting for
sshd) run outside it, so hosts boot in parallel.

A host that powers itself off (`systemctl poweroff`, the poweroff scheduled by user
data, `shutdown -h`) makes nspawn exit; a watcher thread notices, removes the host and
calls the owner's `on_poweroff` (EC2 marks the instance terminated, as shutdown
behaviour `terminate` does). A reboot restarts the same overlay, like a real reboot.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

from ..config import Instance
from ..procs import Records
from . import cloudinit
from .cloudinit import GuestFile
from .container import EXIT_REBOOT, Container
from .network import Network
from .rootfs import BaseImages, normalize_suite

log = logging.getLogger("nfsandbox.hosts")

ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}

BOOTING, RUNNING, STOPPING, TERMINATED, POWERED_OFF = "booting", "running", "stopping", "terminated", "powered-off"


class Host:
    """A booted builder host. `host_public_keys` maps key type → "ssh-ed25519 AAAA..."."""

    def __init__(self, container: Container, owner: str, default_user: str, arch: str, suite: str):
        self.container = container
        self.name = container.name
        self.ip = container.ip
        self.owner = owner
        self.default_user = default_user
        self.arch = arch
        self.suite = suite
        self.state = BOOTING
        self.host_public_keys: dict[str, str] = {}
        self.created_at = time.time()
        self.boot_seconds: float | None = None
        self.on_poweroff: Callable[[], None] | None = None
        self.kvm = False  # /dev/kvm passed in
        self._done = threading.Event()  # set once the host is gone and cleaned up

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "ip": self.ip,
            "owner": self.owner,
            "state": self.state,
            "default_user": self.default_user,
            "arch": self.arch,
            "suite": self.suite,
            "host_public_keys": self.host_public_keys,
            "created_at": self.created_at,
            "boot_seconds": self.boot_seconds,
            "kvm": self.kvm,
        }

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.ip} {self.state} owner={self.owner}>"


class HostPool:
    # providers may put firewalls into the hosts' network namespaces (EC2 security groups)
    enforces_firewalls = True

    def __init__(
        self,
        inst: Instance,
        network: Network,
        bases: BaseImages,
        records: Records,
        apt_proxy_url: str,
        boot_timeout: float = 120.0,
    ):
        self.inst = inst
        self.network = network
        self.bases = bases
        self.records = records
        self.apt_proxy_url = apt_proxy_url
        self.boot_timeout = boot_timeout
        self._lock = threading.Lock()
        self._hosts: dict[str, Host] = {}
        self._reserved: dict[int, str] = {}  # address index -> owner, for what is not a host
        self._next = 0

    # -- public interface ----------------------------------------------------------
    def boot(
        self,
        owner: str,
        userdata: str | bytes | None,
        default_user: str = "admin",
        on_poweroff: Callable[[], None] | None = None,
        arch: str = "x86_64",
        suite: str = "bookworm",
        metadata_keys: list[str] | None = None,
        kvm: bool = False,
    ) -> Host:
        """Boot a fresh host and return it once its sshd answers; raise on failure.
        `kvm`: the machine's /dev/kvm is passed into the host (callers decide it works)."""
        if arch not in ARCHES:
            raise ValueError(f"arch {arch!r}: expected one of {', '.join(ARCHES)}")
        suite = normalize_suite(suite)
        lower = self.bases.ensure(suite)
        with self._lock:
            index = self._allocate()
            host = Host(Container(self.inst, index, lower), owner, default_user, ARCHES[arch], suite)
            host.on_poweroff = on_poweroff
            host.kvm = host.container.kvm = bool(kvm)
            self._hosts[host.name] = host
        try:
            self._start(host, userdata, metadata_keys or [])
        except BaseException:
            self._cleanup(host, TERMINATED)
            raise
        threading.Thread(target=self._watch, args=(host,), name=f"watch-{host.name}", daemon=True).start()
        return host

    def stop(self, host: Host, grace: float = 10.0) -> None:
        """Terminate: power the host off, delete its overlay, free its address."""
        with self._lock:
            if host.state in (STOPPING, TERMINATED, POWERED_OFF):
                already = True
            else:
                already = False
                host.state = STOPPING
        if already:
            host._done.wait(30)
            return
        host.container.terminate(grace)
        self._cleanup(host, TERMINATED)
        log.info("%s terminated (owner %s)", host.name, host.owner)

    def hosts(self) -> list[Host]:
        """Hosts that exist: booting, running, or still being torn down."""
        with self._lock:
            return list(self._hosts.values())

    def get(self, name: str) -> Host | None:
        with self._lock:
            return self._hosts.get(name)

    def reserve(self, owner: str) -> int:
        """An address index no host will get until `release` (a droplet's network namespace
        takes `inst.host_name(index)` and `inst.host_ip(index)` like a host)."""
        with self._lock:
            index = self._allocate()
            self._reserved[index] = owner
            return index

    def release(self, index: int) -> None:
        with self._lock:
            self._reserved.pop(index, None)

    def stop_all(self) -> None:
        threads = [threading.Thread(target=self.stop, args=(h,)) for h in self.hosts()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # -- internals -----------------------------------------------------------------
    def _allocate(self) -> int:
        # round robin, so a just-terminated host's address is not handed out again at
        # once (known_hosts entries of a dead host would otherwise match a new one)
        used = {h.container.index for h in self._hosts.values()} | set(self._reserved)
        for step in range(self.inst.max_hosts):
            index = (self._next + step) % self.inst.max_hosts
            if index not in used:
                self._next = index + 1
                return index
        raise RuntimeError(f"sandbox instance {self.inst.number} has no free host address left")

    def _start(self, host: Host, userdata: str | bytes | None, metadata_keys: list[str]) -> None:
        started = time.monotonic()
        c = host.container
        self.records.put("netns", host.name, netns=host.name, ip=host.ip, dir=str(c.dir))
        self.network.add_host(c.index)
        plan = cloudinit.parse(userdata, host.default_user)
        plan.metadata_keys = list(metadata_keys)
        c.prepare(cloudinit.guest_files(plan) + self._system_files(host))
        c.launch(self.records)
        c.wait_ssh(self.boot_timeout)
        host.host_public_keys = self._host_keys(c)
        host.boot_seconds = round(time.monotonic() - started, 2)
        with self._lock:
            host.state = RUNNING
        log.info("%s booted at %s for %s in %.2fs", host.name, host.ip, host.owner, host.boot_seconds)

    def _system_files(self, host: Host) -> list[GuestFile]:
        """What the cloud's metadata/DHCP would give a host: name, address, resolver."""
        hosts = f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{host.ip}\t{host.name}\n"
        meta = {"name": host.name, "owner": host.owner, "arch": host.arch, "instance": self.inst.number}
        meta["kvm"] = host.kvm
        if host.arch != "x86_64":
            # no emulation here: an arm64 request gets an x86_64 host labelled as such
            meta["emulated_arch"] = True
        return [
            GuestFile("/etc/hostname", f"{host.name}\n".encode()),
            GuestFile("/etc/hosts", hosts.encode()),
            # nothing listens on the host's own port 53: look-ups fail at once instead
            # of stalling sudo/ssh for seconds per try
            GuestFile("/etc/resolv.conf", b"nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"),
            GuestFile(
                "/etc/apt/apt.conf.d/00nixforge-sandbox-proxy",
                f'Acquire::http::Proxy "{self.apt_proxy_url}";\n'.encode(),
            ),
            GuestFile("/etc/nixforge-sandbox.json", json.dumps(meta).encode()),
        ]

    @staticmethod
    def _host_keys(c: Container) -> dict[str, str]:
        keys = {}
        ssh_dir = c.upper / "etc" / "ssh"
        for pub in sorted(Path(ssh_dir).glob("ssh_host_*_key.pub")):
            ktype = pub.name[len("ssh_host_") : -len("_key.pub")]
            keys[ktype] = " ".join(pub.read_text().split()[:2])
        return keys

    def _watch(self, host: Host) -> None:
        c = host.container
        while True:
            rc = c.wait()
            with self._lock:
                if host.state != RUNNING:
                    return  # stop() is handling it
                if rc != EXIT_REBOOT:
                    host.state = STOPPING  # a concurrent stop() now waits for us
            if rc == EXIT_REBOOT:
                log.info("%s rebooting", host.name)
                c.launch(self.records)
                continue
            break
        log.info("%s powered itself off (nspawn exit %s)", host.name, rc)
        self._cleanup(host, POWERED_OFF, host.on_poweroff)

    def _cleanup(self, host: Host, final_state: str, callback: Callable[[], None] | None = None) -> None:
        c = host.container
        c.terminate(grace=0)  # after stop() or a poweroff: only leftovers and cgroups
        self.network.del_host(c.index)
        c.remove()
        self.records.drop("pid", host.name)
        self.records.drop("netns", host.name)
        if callback:
            # before the final state is published: whoever sees "powered-off" also sees
            # what the owner did about it (e.g. the EC2 instance terminated)
            try:
                callback()
            except Exception:
                log.exception("on_poweroff callback of %s (owner %s) failed", host.name, host.owner)
        with self._lock:
            host.state = final_state
            self._hosts.pop(host.name, None)
        host._done.set()
