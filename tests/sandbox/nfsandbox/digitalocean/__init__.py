"""DigitalOcean emulator: the sandbox provider (loaded by the daemon as `nfsandbox.digitalocean`).

Pieces: `catalog.py` (regions, distributions, public images), `faults.py` (fault knobs
and the counters of faults served), `importer.py` (fetching and inspecting a custom
image's URL), `api.py` (state and request handling), `http.py` (HTTP front and the
exchange recorder), `testing.py` (helpers for tests), `keys.py` (account SSH keys),
`droplets.py` (droplets' states and views), `machine.py` (a droplet's namespace,
metadata service and QEMU), `qemu.py` (accelerator probe, disk, command line),
`metadata.py` (the metadata service, also a program run in the droplet's namespace).

Published in state.json `endpoints` (and by `sandboxctl env`): `DIGITALOCEAN_TOKEN`,
`DIGITALOCEAN_API_URL` and `DIGITALOCEAN_END_POINT` (both https://127.0.0.1:PORT/v2/, the
end point python-digitalocean takes), `DIGITALOCEAN_CA_BUNDLE` (the sandbox CA, what the
collection's `ca_bundle` option falls back to) and `digitalocean_endpoint`
(https://127.0.0.1:PORT). HTTPS only, as DigitalOcean.

The importer fetches from the daemon's position: loopback and the instance's own network
only (the B2 emulator's public files, a test's HTTP server, a sandbox host).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from ..providers import EmulatorProvider
from .api import DigitalOceanAPI
from .http import DigitalOceanHTTPServer
from .machine import Machines

log = logging.getLogger("nfsandbox.digitalocean")

__all__ = ["Provider"]


class Provider(EmulatorProvider):
    name = "digitalocean"
    title = "DigitalOcean"

    def __init__(self, sandbox: Any) -> None:
        super().__init__(sandbox)
        self.api: DigitalOceanAPI | None = None
        self.http: DigitalOceanHTTPServer | None = None
        self.work_dir: Path | None = None

    def start(self) -> dict[str, Any]:
        instance = self.sandbox.instance
        # downloads go to disk next to the hosts' overlays, not to /run (a tmpfs)
        self.work_dir = Path(instance.work_dir) / "digitalocean"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.sandbox.ca is None:
            raise RuntimeError("the DigitalOcean emulator needs the sandbox CA (HTTPS only)")
        context = self.sandbox.ca.server_context("127.0.0.1", "localhost")
        self.api = DigitalOceanAPI(work_dir=self.work_dir, networks=[str(instance.network)])
        self.http = DigitalOceanHTTPServer(self.api, context, "127.0.0.1", self.sandbox.port("digitalocean"))
        self.http.start()
        endpoint = self.api.base_url
        log.info("DigitalOcean emulator listening on %s", endpoint)
        if hasattr(self.sandbox, "pool"):  # droplets of custom images boot under QEMU (not in unit tests)
            self.api.droplets.machines = Machines(self.sandbox, self.work_dir)
        return {
            "digitalocean_endpoint": endpoint,
            # exported as they are by `sandboxctl env`: what do_custom_image and python-digitalocean read
            "DIGITALOCEAN_TOKEN": self.api.token,
            "DIGITALOCEAN_API_URL": f"{endpoint}/v2/",
            # python-digitalocean's own variable: objects it builds internally (Account,
            # Action, ...) take their end point from it, never from the Manager
            "DIGITALOCEAN_END_POINT": f"{endpoint}/v2/",
            # the collection's ca_bundle fallback; python-digitalocean alone uses REQUESTS_CA_BUNDLE
            "DIGITALOCEAN_CA_BUNDLE": str(self.sandbox.ca.bundle),
        }

    def _cleanup(self) -> None:
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
