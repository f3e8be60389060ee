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


def emulator_state(
    number: int | None, endpoint_key: str, provider: str, label: str
) -> tuple[dict[str, Any] | None, str]:
    """(state, reason) of a ready sandbox instance whose ``provider`` emulator published
    ``endpoint_key``; the instance defaults to NIXFORGE_SANDBOX_INSTANCE (0)."""
    import os

    from .config import INSTANCE_ENV

    if number is None:
        raw = os.environ.get(INSTANCE_ENV, "").strip()
        number = int(raw) if raw else 0
    path = Instance(number).state_file
    if not path.exists():
        return None, f"sandbox instance {number} is not running (no {path}; run `make sandbox-up`)"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"sandbox instance {number}: unreadable {path}: {exc}"
    if state.get("status") != "ready":
        return None, f"sandbox instance {number} is {state.get('status')!r}, not ready"
    if endpoint_key not in (state.get("endpoints") or {}):
        why = (state.get("providers") or {}).get(provider, "not loaded")
        return None, f"sandbox instance {number} has no {label} emulator ({why})"
    return state, ""
