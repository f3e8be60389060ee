"""The instance metadata service of the sandbox's EC2 hosts, at 169.254.169.254:80 inside
each host's own network namespace, as on EC2 (IMDSv1 and IMDSv2 tokens both answered).

Served paths (what the collection and a user's tools ask for):
``/latest/api/token`` (PUT, IMDSv2), ``/latest/meta-data/instance-id``,
``/latest/meta-data/instance-life-cycle`` (``spot`` / ``on-demand``),
``/latest/meta-data/instance-type``, ``/latest/meta-data/placement/availability-zone``,
``/latest/meta-data/spot/instance-action`` (404 until a spot interruption notice is given,
then ``{"action": "terminate", "time": "...Z"}`` as EC2 writes it two minutes ahead).

Each server runs in a thread of the sandbox daemon that entered the host's network
namespace with setns(2) (network namespaces are per thread): its listening socket lives
in the host's namespace, reachable only from the host (through ``lo``, which the
security-group firewall always lets through).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Callable

log = logging.getLogger("nfsandbox.ec2.imds")

ADDRESS = "169.254.169.254"
_CLONE_NEWNET = 0x40000000


def _setns(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open("/run/netns/%s" % netns, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "setns(%s): %s" % (netns, os.strerror(err)))
    finally:
        os.close(fd)


class Metadata:
    """What one instance's metadata service answers; ``notice`` is set by a spot interruption."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = dict(values)
        self.notice: dict[str, str] | None = None
        self.tokens: set[str] = set()
        self.requests: list[str] = []

    def answer(self, path: str) -> tuple[int, str]:
        self.requests.append(path)
        if path == "/latest/meta-data/spot/instance-action":
            return (200, json.dumps(self.notice)) if self.notice else (404, "Not Found")
        key = path[len("/latest/meta-data/") :] if path.startswith("/latest/meta-data/") else None
        if key is not None and key in self.values:
            return 200, self.values[key]
        if path in ("/latest/meta-data", "/latest/meta-data/"):
            return 200, "\n".join(sorted({*self.values, "spot/instance-action"}))
        return 404, "Not Found"


def _handler(meta: Metadata) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                self._send(400, "Bad Request")
                return
            token = secrets.token_urlsafe(24)
            meta.tokens.add(token)
            self._send(200, token)

        def do_GET(self) -> None:
            token = self.headers.get("X-aws-ec2-metadata-token")
            if token is not None and token not in meta.tokens:
                self._send(401, "Unauthorized")
                return
            self._send(*meta.answer(self.path.split("?", 1)[0]))

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("imds: " + fmt, *args)

    return Handler


class Service:
    """The metadata server of one host: ``start`` in its namespace, ``stop`` with the host."""

    def __init__(self, netns: str, meta: Metadata) -> None:
        self.netns = netns
        self.meta = meta
        self._server: HTTPServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> None:
        subprocess.run(
            ["ip", "netns", "exec", self.netns, "ip", "addr", "replace", ADDRESS + "/32", "dev", "lo"],
            check=True,
            capture_output=True,
        )
        thread = threading.Thread(target=self._serve, name="imds-" + self.netns, daemon=True)
        thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the metadata service of %s did not start" % self.netns)
        if self._error is not None:
            raise RuntimeError("the metadata service of %s: %s" % (self.netns, self._error))

    def _serve(self) -> None:
        try:
            _setns(self.netns)  # this thread only: the daemon's other threads stay where they are
            self._server = HTTPServer((ADDRESS, 80), _handler(self.meta))
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._server.serve_forever(poll_interval=0.5)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def start_for(netns: str, values: dict[str, str], on_error: Callable[..., None] = log.warning) -> Service | None:
    """A started metadata service, or None (logged) when the namespace refuses one."""
    service = Service(netns, Metadata(values))
    try:
        service.start()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        on_error("no metadata service for %s: %s", netns, exc)
        return None
    return service
