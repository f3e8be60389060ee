"""HTTP front of the DigitalOcean emulator (what python-digitalocean talks to).

Plain HTTP on 127.0.0.1: python-digitalocean takes the whole end point URL
(`DIGITALOCEAN_API_URL`, e.g. http://127.0.0.1:PORT/v2/), so no TLS is needed.

Not part of the DigitalOcean API (the emulator's token is required):
- `GET /_sandbox/exchanges` lists the last requests and answers (`DELETE` clears them):
  the contract test validates them against DigitalOcean's OpenAPI document;
- `GET /_sandbox/faults`: the fault knobs in effect and how many faults were served.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .api import DigitalOceanAPI

log = logging.getLogger("nfsandbox.digitalocean.http")

SANDBOX_PREFIX = "/_sandbox/"
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
            "request_headers": {k: v for k, v in headers.items() if k.lower() != "authorization"},
            "request_body": body.decode("utf-8", errors="replace"),
            "status": status,
            "response_headers": dict(extra),
            "response_body": payload,
        }
        with self.lock:
            self.items.append(entry)
            del self.items[:-MAX_EXCHANGES]

    def list(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.items)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: DigitalOceanAPI
    recorder: Recorder


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "nfsandbox-digitalocean/1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        if parts.path.startswith(SANDBOX_PREFIX):
            self._send(*self._sandbox(parts.path[len(SANDBOX_PREFIX) :].rstrip("/")))
            return
        query = parse_qs(parts.query, keep_blank_values=True)
        api = self.server.api
        try:
            status, payload, extra = api.handle(self.command, parts.path, query, self.headers, body)
        except Exception:  # an emulator bug must still answer like the service would
            log.exception("digitalocean emulator failed on %s %s", self.command, self.path)
            status, payload, extra = 500, {"id": "server_error", "message": "Unexpected server-side error"}, {}
        self.server.recorder.add(self.command, self.path, dict(self.headers.items()), body, status, payload, extra)
        self._send(status, payload, extra)

    def _sandbox(self, what: str) -> tuple[int, Any, dict[str, str]]:
        api = self.server.api
        if not api.authorized(self.headers):
            return 401, {"id": "unauthorized", "message": "Unable to authenticate you"}, {}
        if what == "exchanges" and self.command == "GET":
            return 200, {"exchanges": self.server.recorder.list()}, {}
        if what == "exchanges" and self.command == "DELETE":
            self.server.recorder.clear()
            return 204, None, {}
        if what == "faults" and self.command == "GET":
            return 200, api.faults.snapshot(), {}
        return 404, {"id": "not_found", "message": "no such sandbox endpoint"}, {}

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
        except (ConnectionError, TimeoutError) as exc:
            log.debug("digitalocean emulator connection dropped: %s", exc)
            self.close_connection = True


class DigitalOceanHTTPServer:
    def __init__(self, api: DigitalOceanAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = _Server((host, port), _Handler)
        self.server.api = api
        self.server.recorder = Recorder()
        host_, port_ = self.address
        api.base_url = f"http://{host_}:{port_}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="digitalocean-http", daemon=True)

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
