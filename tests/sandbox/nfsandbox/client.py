"""Talk to a running instance: its state.json and its control API (stdlib only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from . import procs
from .config import Instance


class NotUp(RuntimeError):
    pass


def read_state(inst: Instance) -> dict[str, Any] | None:
    try:
        return json.loads(inst.state_file.read_text())
    except (OSError, ValueError):
        return None


def daemon_alive(inst: Instance) -> bool:
    return any(r["name"] == "daemon" for r in procs.Records(inst.records_dir).live_pids())


def call(inst: Instance, method: str, path: str, body: Any = None, timeout: float = 300) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(  # noqa: S310 (always http://127.0.0.1)
        inst.control_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", "")
        except ValueError:
            message = exc.reason
        raise RuntimeError(f"sandbox control API {method} {path}: HTTP {exc.code}: {message}") from None
    except OSError as exc:
        raise NotUp(
            f"sandbox instance {inst.number} is not up (control API {inst.control_url}: {exc}); run `make sandbox-up`"
        ) from None
