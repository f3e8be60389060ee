"""HTTPS front of the Equinix Metal emulator (what packet-python talks to).

packet-python builds ``"https://" + end_point + "/" + path``; with ``end_point`` set to
``127.0.0.1:PORT`` the paths arrive at the root, with ``127.0.0.1:PORT/metal/v1`` under the
historical prefix. Both are served. TLS uses a certificate issued by the sandbox CA, which
clients trust through ``REQUESTS_CA_BUNDLE``.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .metal_api import MetalAPI

log = logging.getLogger("nfsandbox.metal.http")


# Not part of the Metal API: the last requests and answers, for the contract test and for
# debugging (`GET` lists them, `DELETE` clears them; the emulator's token is required).
EXCHANGES_PATH = "/_sandbox/exchanges"
MAX_EXCHANGES = 5000


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[dict[str, Any]] = []

    def add(
        self, method: str, path: str, headers: dict[str, str], body: bytes, status: int, payload: Any, extra: Any
    ) -> None:
        entry = {
            "method": method,
            "path": path,
            "request_headers": {k: v for k, v in headers.items() if k.lower() != "x-auth-token"},
            "request_body": body.decode("utf-8", errors="replace"),
            "status": status,
            "response_headers": dict(extra),
            "response_body": payload,
        }
        with self.lock:
            self.items.append(entry)
            del self.items[:-MAX_EXCHANGES]

    def serve(self, method: str, headers: Any, token: str) -> tuple[int, Any, dict[str, str]]:
        if headers.get("X-Auth-Token") != token:
            return 401, {"errors": ["Invalid authentication token"]}, {}
        with self.lock:
            if method == "DELETE":
                self.items.clear()
                return 204, None, {}
            if method == "GET":
                return 200, {"exchanges": list(self.items)}, {}
        return 404, {"errors": ["Not found"]}, {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: MetalAPI
    ssl_context: ssl.SSLContext
    recorder: Recorder

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        # The handshake runs in the handler's thread (first read), not in the accept loop.
        return self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "nfsandbox-metal/1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        recorder = self.server.recorder
        if parts.path.rstrip("/") == EXCHANGES_PATH:
            status, payload, extra = recorder.serve(self.command, self.headers, self.server.api.token)
            self._send(status, payload, extra)
            return
        try:
            status, payload, extra = self.server.api.handle(self.command, parts.path, query, self.headers, body)
        except Exception:  # an emulator bug must still answer like a server would
            log.exception("metal emulator failed on %s %s", self.command, self.path)
            status, payload, extra = 500, {"errors": ["Internal server error"]}, {}
        recorder.add(self.command, self.path, dict(self.headers.items()), body, status, payload, extra)
        self._send(status, payload, extra)

    def _send(self, status: int, payload: Any, extra: dict[str, str]) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.debug("metal emulator connection dropped: %s", exc)
            self.close_connection = True


class MetalHTTPServer:
    def __init__(self, api: MetalAPI, ssl_context: ssl.SSLContext, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = _Server((host, port), _Handler)
        self.server.api = api
        self.server.ssl_context = ssl_context
        self.server.recorder = Recorder()
        self.thread = threading.Thread(target=self.server.serve_forever, name="metal-https", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
