"""The control API of a sandbox instance, on 127.0.0.1 only (tests and sandboxctl use it).

GET  /status               state.json, live
GET  /resources            {"resources": [...]}: hosts in use + every provider's
GET  /hosts                {"hosts": [...]} live hosts
POST /hosts                boot a host {"owner", "userdata" | "userdata_b64",
                           "default_user", "arch", "suite"} → host
GET  /hosts/<name>         a host, also after it terminated or powered off
DELETE /hosts/<name>       terminate it
POST /faults/<provider>    JSON body → provider.set_faults(body)
GET  /faults/<provider>    the faults still armed and the ones served (provider.get_faults())
POST /reset                every provider's reset(), then terminate all hosts
POST /shutdown             stop the daemon (what `sandboxctl down` asks first)
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .daemon import Sandbox
    from .hosts import Host

log = logging.getLogger("nfsandbox.control")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ControlAPI:
    def __init__(self, sandbox: Sandbox, port: int):
        self.sandbox = sandbox
        self.port = port
        self.booted: dict[str, Host] = {}  # hosts booted through this API, kept after they end
        self.poweroffs: dict[str, float] = {}
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("%s " + fmt, self.client_address[0], *args)

            def _dispatch(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw.strip() else {}
                    status, reply = api.route(self.command, self.path.split("?")[0].rstrip("/"), body)
                except ApiError as exc:
                    status, reply = exc.status, {"error": str(exc)}
                except json.JSONDecodeError as exc:
                    status, reply = 400, {"error": f"request body is not JSON: {exc}"}
                except Exception as exc:
                    log.exception("control API %s %s", self.command, self.path)
                    status, reply = 500, {"error": f"{type(exc).__name__}: {exc}"}
                data = json.dumps(reply, indent=1, default=str).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _dispatch

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="control-api", daemon=True).start()
        log.info("control API on http://127.0.0.1:%s", self.port)

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    # -- routes --------------------------------------------------------------------
    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        sb = self.sandbox
        parts = [p for p in path.split("/") if p]
        if method == "GET" and parts == ["status"]:
            return 200, sb.state()
        if method == "GET" and parts == ["resources"]:
            return 200, {"resources": sb.resources()}
        if method == "GET" and parts == ["hosts"]:
            return 200, {"hosts": [h.to_dict() for h in sb.pool.hosts()]}
        if method == "POST" and parts == ["hosts"]:
            return 201, self._boot(body)
        if len(parts) == 2 and parts[0] == "hosts":
            host = sb.pool.get(parts[1]) or self.booted.get(parts[1])
            if host is None:
                raise ApiError(404, f"no host {parts[1]!r} in sandbox instance {sb.instance.number}")
            if method == "DELETE":
                sb.pool.stop(host)
            elif method != "GET":
                raise ApiError(405, f"{method} not allowed on {path}")
            return 200, self._view(host)
        if method == "GET" and len(parts) == 2 and parts[0] == "faults":
            try:
                provider = sb.providers.get(parts[1])
            except KeyError as exc:
                raise ApiError(404, str(exc.args[0])) from None
            getter = getattr(provider, "get_faults", None)
            if getter is None:
                raise ApiError(404, f"provider {parts[1]} does not report its faults")
            return 200, {"provider": parts[1], "faults": getter()}
        if method == "POST" and len(parts) == 2 and parts[0] == "faults":
            if not isinstance(body, dict):
                raise ApiError(400, "faults must be a JSON object")
            try:
                provider = sb.providers.get(parts[1])
            except KeyError as exc:
                raise ApiError(404, str(exc.args[0])) from None
            try:
                provider.set_faults(body)
            except ValueError as exc:  # a malformed fault document is the caller's mistake
                raise ApiError(400, f"faults for {parts[1]}: {exc}") from None
            return 200, {"provider": parts[1], "faults": body}
        if method == "POST" and parts == ["reset"]:
            sb.reset()
            return 200, {"reset": True}
        if method == "POST" and parts == ["shutdown"]:
            sb.request_stop()
            return 202, {"stopping": True}
        raise ApiError(HTTPStatus.NOT_FOUND, f"no route {method} {path}")

    def _boot(self, body: dict) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "expected a JSON object")
        userdata: str | bytes | None = body.get("userdata")
        if body.get("userdata_b64"):
            userdata = base64.b64decode(body["userdata_b64"])
        name_box: list[str] = []

        def on_poweroff() -> None:
            if name_box:
                self.poweroffs[name_box[0]] = time.time()

        try:
            host = self.sandbox.pool.boot(
                owner=str(body.get("owner", "control-api")),
                userdata=userdata,
                default_user=str(body.get("default_user", "admin")),
                on_poweroff=on_poweroff,
                arch=str(body.get("arch", "x86_64")),
                suite=str(body.get("suite", "bookworm")),
            )
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        name_box.append(host.name)
        self.booted[host.name] = host
        return self._view(host)

    def _view(self, host: Host) -> dict:
        view = host.to_dict()
        if host.name in self.poweroffs:
            view["poweroff_noticed_at"] = self.poweroffs[host.name]
        return view
