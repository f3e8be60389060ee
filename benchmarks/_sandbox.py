"""The sandbox instance every benchmark runs on (NIXFORGE_SANDBOX_INSTANCE)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "sandbox"))

from nfsandbox import client  # noqa: E402
from nfsandbox.config import instance_from_env  # noqa: E402
from nfsandbox.testing import SandboxHandle, sandboxctl  # noqa: E402


@contextlib.contextmanager
def sandbox_up() -> Iterator[SandboxHandle]:
    """The instance, brought up when it is down, and then down again at the end."""
    inst = instance_from_env()
    state = client.read_state(inst)
    started_here = not (client.daemon_alive(inst) and state and state.get("status") == "ready")
    if started_here:
        print(f"starting sandbox instance {inst.number}", flush=True)
        sandboxctl("up", instance=inst.number)
    try:
        yield SandboxHandle(inst, started_here)
    finally:
        if started_here:
            sandboxctl("down", instance=inst.number)
