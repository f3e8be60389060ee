"""What the emulators' HTTP fronts share: the threaded server with its start/stop, a
request handler that survives dropped connections, and the recorder of exchanges that
the contract tests validate against the providers' OpenAPI documents.

Each emulator keeps only what differs: its routes, its error bodies, its auth header.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_EXCHANGES = 5000


class Recorder:
    """The last requests and answers (without the auth header), oldest first; with
    ``log_path`` every one is also appended there as a JSON line, never cleared (the
    contract tests validate all the requests a sandbox instance answered)."""

    def __init__(self, secret_header: str, log_path: Path | None = None) -> None:
        self.secret_header = secret_header.lower()
        self.lock = threading.Lock()
        self.items: list[dict[str, Any]] = []
        self.log_path = log_path
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)

    def add(
        self, method: str, path: str, headers: dict[str, str], body: bytes, status: int, payload: Any, extra: Any
    ) -> None:
        entry = {
            "at": time.time(),  # when it was answered: tests check the waits clients keep
            "method": method,
            "path": path,
            "request_headers": {k: v for k, v in headers.items() if k.lower() != self.secret_header},
            "request_body": body.decode("utf-8", errors="replace"),
            "status": status,
            "response_headers": dict(extra),
            "response_body": payload,
        }
        with self.lock:
            self.items.append(entry)
            del self.items[:-MAX_EXCHANGES]
            if self.log_path is not None:
                with self.log_path.open("a") as log:
                    log.write(json.dumps(entry, default=str) + "\n")

    def list(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.items)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


class Server(ThreadingHTTPServer):
    """One thread per connection; with ``ssl_context`` the TLS handshake happens in the
    connection's thread (first read), not in the accept loop."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    ssl_context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        if self.ssl_context is None:
            return sock, addr
        return self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive; a client that hangs up costs a debug line, not a traceback."""

    protocol_version = "HTTP/1.1"
    log: logging.Logger = logging.getLogger("nfsandbox.http")

    def log_message(self, format: str, *args: Any) -> None:
        self.log.debug("%s " + format, self.address_string(), *args)

    def send_json(self, status: int, payload: Any, extra: dict[str, str]) -> None:
        """Answer with ``payload`` as JSON (no body for ``None`` and for HEAD)."""
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

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            self.log.debug("connection dropped: %s", exc)
            self.close_connection = True


class EmulatorServer:
    """A started/stopped server around ``handler``; ``attrs`` become server attributes
    (the API object, the recorder, ...) that the handler reads as ``self.server.<name>``."""

    def __init__(
        self,
        handler: type[Handler],
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        **attrs: Any,
    ) -> None:
        self.server = Server((host, port), handler)
        self.server.ssl_context = ssl_context
        for key, value in attrs.items():
            setattr(self.server, key, value)
        self.thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

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
