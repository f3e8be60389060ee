"""The long-running process of one sandbox instance (started by `sandboxctl up`).

It owns the network, the apt proxy, the host pool, the CA, the providers and the
control API, and keeps `state.json` current. Everything it creates is recorded on
disk (procs.Records) or derivable from the instance number, so `sandboxctl down`
cleans up even when this process was SIGKILLed.

Providers receive the `Sandbox` object below: `instance`, `pool`, `port(name)`,
`gateway`, `state_dir`, `ca` (tls.CertificateAuthority: `server_context(*names)`,
`issue(*names)`, `bundle`), `apt_proxy_url`, `logger(name)`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from . import procs
from .config import DEFAULT_PROVIDERS, Instance
from .control import ControlAPI
from .hosts import HostPool
from .hosts.aptproxy import AptProxy, machine_mirrors
from .hosts.network import Network
from .hosts.rootfs import UP_SUITES, BaseImages, normalize_suite
from .providers import Providers
from .tls import CertificateAuthority

log = logging.getLogger("nfsandbox.daemon")


class Sandbox:
    def __init__(self, inst: Instance, providers: list[str], suites: list[str]):
        self.instance = inst
        self.state_dir = inst.state_dir
        self.gateway = inst.gateway
        self.records = procs.Records(inst.records_dir)
        self.network = Network(inst)
        self.aptproxy = AptProxy(inst, self.records)
        self.apt_proxy_url = self.aptproxy.url
        self.mirror, self.security_mirror = machine_mirrors()
        self.bases = BaseImages(self.mirror, self.security_mirror)
        self.pool = HostPool(inst, self.network, self.bases, self.records, self.aptproxy.url)
        self.providers = Providers(providers)
        self.suites = [normalize_suite(s) for s in suites]
        self.ca: CertificateAuthority | None = None
        self.control = ControlAPI(self, inst.port("control"))
        self.status = "starting"
        self.error: str | None = None
        self.timings: dict[str, float] = {}
        self.started_at = time.time()
        self._stop = threading.Event()

    # -- what providers use --------------------------------------------------------
    def port(self, name: str) -> int:
        return self.instance.port(name)

    @staticmethod
    def logger(name: str) -> logging.Logger:
        return logging.getLogger(f"nfsandbox.{name}")

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        t0 = time.monotonic()
        self.network.up()
        self.aptproxy.start(self.mirror, self.security_mirror)
        self.ca = CertificateAuthority(self.state_dir)
        self.control.start()  # early, so `status` can answer while images are built
        self.write_state()
        for suite in self.suites:
            t = time.monotonic()
            self.bases.ensure(suite)
            self.timings[f"base_{suite}"] = round(time.monotonic() - t, 2)
        self.providers.start(self)
        self.timings["start"] = round(time.monotonic() - t0, 2)
        self.status = "ready"
        self.write_state()
        log.info("sandbox instance %s ready in %.1fs", self.instance.number, self.timings["start"])

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        last = ""
        while not self._stop.wait(1.0):
            last = self.write_state(last)

    def stop(self) -> None:
        self.status = "stopping"
        self.write_state()
        self.providers.stop()
        self.pool.stop_all()
        self.control.stop()
        self.aptproxy.stop()
        self.network.down()
        log.info("sandbox instance %s stopped", self.instance.number)

    def reset(self) -> None:
        self.providers.reset()
        self.pool.stop_all()

    # -- state -----------------------------------------------------------------------
    def resources(self) -> list[dict[str, Any]]:
        hosts = [
            {"provider": "sandbox", "type": "host", "id": h.name, "ip": h.ip, "owner": h.owner, "state": h.state}
            for h in self.pool.hosts()
        ]
        return hosts + self.providers.resources()

    def state(self) -> dict[str, Any]:
        inst = self.instance
        return {
            "instance": inst.number,
            "status": self.status,
            "error": self.error,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "control_url": inst.control_url,
            "bridge": inst.bridge,
            "network": str(inst.network),
            "gateway": inst.gateway,
            "apt_proxy_url": self.aptproxy.url,
            "debian_mirror": self.mirror,
            "ca_bundle": str(self.ca.bundle) if self.ca else None,
            "ca_cert": str(self.ca.ca_cert) if self.ca else None,
            "suites": self.suites,
            "endpoints": self.providers.endpoints,
            "providers": self.providers.status,
            "hosts": [h.to_dict() for h in self.pool.hosts()],
            "timings": self.timings,
            "state_dir": str(inst.state_dir),
            "log": str(inst.log_file),
        }

    def write_state(self, previous: str = "") -> str:
        text = json.dumps(self.state(), indent=1, sort_keys=True, default=str)
        if text != previous:
            tmp = self.instance.state_file.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self.instance.state_file)
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nfsandbox.daemon")
    parser.add_argument("--instance", type=int, required=True)
    parser.add_argument(
        "--providers", default=os.environ.get("NIXFORGE_SANDBOX_PROVIDERS", ",".join(DEFAULT_PROVIDERS))
    )
    parser.add_argument("--suites", default=os.environ.get("NIXFORGE_SANDBOX_SUITES", ",".join(UP_SUITES)))
    args = parser.parse_args(argv)
    inst = Instance(args.instance)
    inst.state_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=str(inst.log_file),
        level=logging.DEBUG if os.environ.get("NIXFORGE_SANDBOX_DEBUG") else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # this process and everything it starts (apt-cacher-ng) lives in the instance cgroup
    procs.join_cgroup(f"{inst.cgroup_name}/daemon", os.getpid())
    records = procs.Records(inst.records_dir)
    records.put_pid("pid", "daemon", os.getpid())

    names = [n.strip() for n in args.providers.split(",") if n.strip()]
    sandbox = Sandbox(inst, names, [s for s in args.suites.split(",") if s.strip()])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: sandbox.request_stop())
    code = 0
    try:
        sandbox.start()
        sandbox.run()
    except Exception as exc:
        log.exception("sandbox instance %s failed", inst.number)
        sandbox.status, sandbox.error, code = "failed", f"{type(exc).__name__}: {exc}", 1
        sandbox.write_state()
    finally:
        try:
            sandbox.stop()
        except Exception:
            log.exception("stopping sandbox instance %s", inst.number)
            code = 1
        if code == 0:
            inst.state_file.unlink(missing_ok=True)
        else:
            sandbox.status = "failed"
            sandbox.write_state()
        records.drop("pid", "daemon")
    return code


if __name__ == "__main__":
    sys.exit(main())
