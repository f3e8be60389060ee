"""HTTPS front of the Equinix Metal emulator (what packet-python talks to).

packet-python builds ``"https://" + end_point + "/" + path``; with ``end_point`` set to
``127.0.0.1:PORT`` the paths arrive at the root, with ``127.0.0.1:PORT/metal/v1`` under the
historical prefix. Both are served. TLS uses a certificate issued by the sandbox CA, which
clients trust through ``REQUESTS_CA_BUNDLE``.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..httpserver import EmulatorServer, Handler, Recorder
from .api import MetalAPI

log = logging.getLogger("nfsandbox.metal.http")


# Not part of the Metal API: the last requests and answers, for the contract test and for
# debugging (`GET` lists them, `DELETE` clears them; the emulator's token is required).
EXCHANGES_PATH = "/_sandbox/exchanges"


def serve_exchanges(recorder: Recorder, method: str, headers: Any, token: str) -> tuple[int, Any, dict[str, str]]:
    if headers.get("X-Auth-Token") != token:
        return 401, {"errors": ["Invalid authentication token"]}, {}
    if method == "DELETE":
        recorder.clear()
        return 204, None, {}
    if method == "GET":
        return 200, {"exchanges": recorder.list()}, {}
    return 404, {"errors": ["Not found"]}, {}


class _Handler(Handler):
    server_version = "nfsandbox-metal/1"
    # the same logger as the module's; not `log = log`, which sends pylint's inference in circles
    log = logging.getLogger("nfsandbox.metal.http")

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        recorder = self.server.recorder
        if parts.path.rstrip("/") == EXCHANGES_PATH:
            self.send_json(*serve_exchanges(recorder, self.command, self.headers, self.server.api.token))
            return
        try:
            status, payload, extra = self.server.api.handle(self.command, parts.path, query, self.headers, body)
        except Exception:  # an emulator bug must still answer like a server would
            log.exception("metal emulator failed on %s %s", self.command, self.path)
            status, payload, extra = 500, {"errors": ["Internal server error"]}, {}
        recorder.add(self.command, self.path, dict(self.headers.items()), body, status, payload, extra)
        self.send_json(status, payload, extra)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch


class MetalHTTPServer(EmulatorServer):
    def __init__(
        self,
        api: MetalAPI,
        ssl_context: ssl.SSLContext,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: Path | None = None,
    ) -> None:
        recorder = Recorder("x-auth-token", log_path)  # log_path: every exchange, for the contract test
        super().__init__(_Handler, "metal-https", host, port, ssl_context=ssl_context, api=api, recorder=recorder)
