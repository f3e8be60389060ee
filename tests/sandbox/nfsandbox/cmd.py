"""Run a command and fail with its stderr in the message (ip, mount, ssh-keygen, ...)."""

from __future__ import annotations

import subprocess
from typing import Sequence


class CommandError(RuntimeError):
    pass


def run(argv: Sequence[str], check: bool = True, timeout: float = 120, input: bytes | None = None) -> str:
    """Return stdout; on failure raise CommandError naming the command and its stderr."""
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise CommandError(f"{argv[0]}: not installed ({exc})") from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"{' '.join(argv)}: timed out after {timeout}s") from None
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip() or proc.stdout.decode(errors="replace").strip()
        raise CommandError(f"{' '.join(argv)} failed (exit {proc.returncode}): {err}")
    return proc.stdout.decode(errors="replace")
