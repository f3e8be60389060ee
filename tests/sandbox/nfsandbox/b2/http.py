"""HTTPS front of the B2 emulator on 127.0.0.1 (B2 speaks nothing else; the certificate is
issued by the sandbox CA, which clients trust through REQUESTS_CA_BUNDLE or a CA option).

One thread per connection, HTTP/1.1 keep-alive. Upload bodies are handed to the API as
a length-limited stream it copies to disk in 1 MiB chunks; downloads leave through
`socket.sendfile` from the stored files, so no object passes whole through memory.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..httpserver import EmulatorServer, Handler
from .api import B2API, Request, Response

log = logging.getLogger("nfsandbox.b2.http")

# An answer given before the body was read (401, a fault, ...): the rest of a body up to
# this size is read and dropped to keep the connection; a bigger one closes it instead.
DRAIN_LIMIT = 256 << 20


class BodyStream:
    """The request body: at most `length` bytes of the connection's reader."""

    def __init__(self, raw: Any, length: int) -> None:
        self.raw = raw
        self.left = length

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            return 0
        view = memoryview(buffer)[: self.left]
        n = self.raw.readinto(view) or 0
        self.left -= n
        return n

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self.left:
            size = self.left
        data = self.raw.read(size) if size else b""
        self.left -= len(data)
        return data

    def drain(self) -> bool:
        """Read and drop what is left; False when too much is left to be worth it."""
        if self.left > DRAIN_LIMIT:
            return False
        buf = bytearray(1 << 20)
        while self.left > 0:
            if not self.readinto(buf):
                return False
        return True


class _Handler(Handler):
    server_version = "nfsandbox-b2/1"
    # the same logger as the module's; not `log = log`, which sends pylint's inference in circles
    log = logging.getLogger("nfsandbox.b2.http")
    rbufsize = 1 << 16

    def setup(self) -> None:
        super().setup()
        # JSON answers are small writes after the headers: without this, Nagle and the
        # client's delayed ACK add ~40 ms to every call on a kept-alive connection
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _dispatch(self) -> None:
        raw_length = self.headers.get("Content-Length") or "0"
        length = int(raw_length) if raw_length.isdigit() else 0
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # chunked bodies are not B2's way; do not guess their end
        body = BodyStream(self.rfile, length)
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        request = Request(self.command, parts.path, query, self.headers, body, length)
        try:
            response = self.server.api.handle(request)
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.info("b2 emulator: %s %s: connection lost (%s)", self.command, parts.path, exc)
            self.close_connection = True
            return
        except Exception:  # an emulator bug must still answer like a server would
            log.exception("b2 emulator failed on %s %s", self.command, parts.path)
            response = Response(500, {"status": 500, "code": "internal_error", "message": "emulator failure"})
        if body.left and not body.drain():
            self.close_connection = True
        self._send(response)

    def _send(self, response: Response) -> None:
        data = b""
        if response.segments is None and response.payload is not None:
            data = json.dumps(response.payload).encode()
        self.send_response(response.status)
        if response.segments is None:
            if response.payload is not None:
                self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
        else:
            self.send_header("Content-Length", str(response.length))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        if data:
            self.wfile.write(data)
            return
        try:
            for path, offset, count in response.segments or []:
                with open(path, "rb") as handle:
                    self.connection.sendfile(handle, offset, count)
        except OSError as exc:  # the version was deleted under the download, or the client left
            log.info("b2 emulator: download interrupted: %s", exc)
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch


class B2HTTPServer(EmulatorServer):
    def __init__(self, api: B2API, ssl_context: ssl.SSLContext | None, host: str = "127.0.0.1", port: int = 0) -> None:
        # ssl_context None (plain HTTP) is for the emulator's own unit tests only
        super().__init__(_Handler, "b2-https", host, port, ssl_context=ssl_context, api=api)
