"""apt inside the hosts: an apt-cacher-ng of our own, listening on the bridge address.

The hosts have no route out; apt reaches the Debian mirror through this proxy
(`Acquire::http::Proxy` is written into every host). It is not the system service:
own configuration, cache, log, socket and PID file per instance, so several
instances and a system apt-cacher-ng can coexist. Its default configuration answers
`503 Host not found` here; it needs `Remap-` lines that name the mirror this machine
really uses, so they are read from the machine's apt sources at run time.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import time
from pathlib import Path

from ..config import Instance
from ..procs import Records

log = logging.getLogger("nfsandbox.hosts.aptproxy")

APT_SOURCES = Path("/etc/apt")
# Names a host's apt sources may use for Debian; all are served from the machine's mirror.
DEBIAN_ALIASES = ("deb.debian.org/debian", "httpredir.debian.org/debian", "ftp.debian.org/debian")
SECURITY_ALIASES = ("deb.debian.org/debian-security", "security.debian.org/debian-security", "security.debian.org")


def _source_uris(apt_dir: Path = APT_SOURCES) -> list[str]:
    uris: list[str] = []
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":  # deb822
            uris += re.findall(r"^URIs:\s*(.+)$", text, flags=re.M | re.I)
        elif path.name == "sources.list" or path.suffix == ".list":
            for line in text.splitlines():
                m = re.match(r"^\s*deb(?:-src)?\s+(?:\[[^]]*\]\s+)?(\S+)", line)
                if m:
                    uris.append(m.group(1))
    return [u for group in uris for u in group.split()]


def machine_mirrors(apt_dir: Path = APT_SOURCES) -> tuple[str, str]:
    """(Debian mirror, security mirror) URLs this machine's apt uses, http only."""
    mirror = security = None
    for uri in _source_uris(apt_dir):
        if not uri.startswith("http://"):
            continue  # apt-cacher-ng can only cache plain http
        path = uri.rstrip("/")
        if path.endswith("/debian-security") and security is None:
            security = path
        elif path.endswith("/debian") and mirror is None:
            mirror = path
    if mirror is None:
        raise RuntimeError(
            f"no http Debian mirror found in {apt_dir}/sources.list*; the sandbox needs one to build "
            "its hosts and to proxy their apt (add e.g. 'deb http://deb.debian.org/debian bookworm main')"
        )
    return mirror, security or "http://deb.debian.org/debian-security"


def _hostpath(url: str) -> str:
    return url.split("://", 1)[1]


class AptProxy:
    def __init__(self, inst: Instance, records: Records):
        self.inst = inst
        self.records = records
        self.dir = inst.work_dir / "aptproxy"
        self.port = inst.port("aptproxy")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.inst.gateway}:{self.port}"

    def config(self, mirror: str, security: str) -> str:
        deb = " ".join(dict.fromkeys((_hostpath(mirror), *DEBIAN_ALIASES)))
        sec = " ".join(dict.fromkeys((_hostpath(security), *SECURITY_ALIASES)))
        return "\n".join(
            [
                f"CacheDir: {self.inst.apt_cache_dir}",
                f"LogDir: {self.dir / 'log'}",
                "SupportDir: /usr/lib/apt-cacher-ng",
                f"SocketPath: {self.dir / 'socket'}",
                f"PidFile: {self.dir / 'pid'}",
                f"BindAddress: {self.inst.gateway}",
                f"Port: {self.port}",
                "ForeGround: 1",
                "ExThreshold: 4",
                # requests for any Debian name go to the mirror this machine uses
                f"Remap-debrep: {deb} ; {mirror}/",
                f"Remap-secdeb: {sec} ; {security}/",
                "",
            ]
        )

    def start(self, mirror: str, security: str, timeout: float = 15) -> None:
        conf = self.dir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        (self.dir / "log").mkdir(exist_ok=True)
        self.inst.apt_cache_dir.mkdir(parents=True, exist_ok=True)
        (conf / "acng.conf").write_text(self.config(mirror, security))
        logf = open(self.dir / "log" / "stdout.log", "ab")
        self.proc = subprocess.Popen(
            ["apt-cacher-ng", "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=logf, stderr=logf
        )
        logf.close()
        self.records.put_pid("pid", "aptproxy", self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"apt-cacher-ng exited at start (code {self.proc.returncode}); see {self.dir}/log")
            try:
                with socket.create_connection((self.inst.gateway, self.port), timeout=1):
                    log.info("apt proxy %s -> %s", self.url, mirror)
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"apt-cacher-ng did not listen on {self.url} within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.records.drop("pid", "aptproxy")
