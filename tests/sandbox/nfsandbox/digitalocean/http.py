"""HTTPS front of the DigitalOcean emulator (what python-digitalocean talks to).

HTTPS only, as api.digitalocean.com: the certificate is issued by the sandbox CA (tls.py),
which clients trust through the collection's `ca_bundle` option / DIGITALOCEAN_CA_BUNDLE
or REQUESTS_CA_BUNDLE. python-digitalocean takes the whole end point URL
(`DIGITALOCEAN_API_URL`, https://127.0.0.1:PORT/v2/).

Not part of the DigitalOcean API (the emulator's token is required): `GET
/_sandbox/exchanges` lists the last requests and answers (`DELETE` clears them); the
contract test validates them against DigitalOcean's OpenAPI document. `GET
/_sandbox/droplets` shows each droplet's status, error, QEMU/metadata PIDs, accelerator
and serial console log.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..httpserver import EmulatorServer, Handler, Recorder
from .api import DigitalOceanAPI

log = logging.getLogger("nfsandbox.digitalocean.http")

SANDBOX_PREFIX = "/_sandbox/"


class _Handler(Handler):
    server_version = "nfsandbox-digitalocean/1"
    # the same logger as the module's; not `log = log`, which sends pylint's inference in circles
    log = logging.getLogger("nfsandbox.digitalocean.http")

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        if parts.path.startswith(SANDBOX_PREFIX):
            self.send_json(*self._sandbox(parts.path[len(SANDBOX_PREFIX) :].rstrip("/")))
            return
        query = parse_qs(parts.query, keep_blank_values=True)
        api = self.server.api
        try:
            status, payload, extra = api.handle(self.command, parts.path, query, self.headers, body)
        except Exception:  # an emulator bug must still answer like the service would
            log.exception("digitalocean emulator failed on %s %s", self.command, self.path)
            status, payload, extra = 500, {"id": "server_error", "message": "Unexpected server-side error"}, {}
        self.server.recorder.add(self.command, self.path, dict(self.headers.items()), body, status, payload, extra)
        self.send_json(status, payload, extra)

    def _sandbox(self, what: str) -> tuple[int, Any, dict[str, str]]:
        api = self.server.api
        if not api.authorized(self.headers):
            return 401, {"id": "unauthorized", "message": "Unable to authenticate you"}, {}
        if what == "exchanges" and self.command == "GET":
            return 200, {"exchanges": self.server.recorder.list()}, {}
        if what == "exchanges" and self.command == "DELETE":
            self.server.recorder.clear()
            return 204, None, {}
        if what == "droplets" and self.command == "GET":
            return 200, {"droplets": api.droplets_debug()}, {}
        return 404, {"id": "not_found", "message": "no such sandbox endpoint"}, {}

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch


class DigitalOceanHTTPServer(EmulatorServer):
    def __init__(
        self, api: DigitalOceanAPI, ssl_context: ssl.SSLContext, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__(
            _Handler,
            "digitalocean-https",
            host,
            port,
            ssl_context=ssl_context,
            api=api,
            recorder=Recorder("authorization"),
        )
        host_, port_ = self.address
        api.base_url = f"https://{host_}:{port_}"
