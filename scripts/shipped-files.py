#!/usr/bin/env python3
"""Filter NUL-separated repository paths (stdin) to those `ansible-galaxy collection build`
ships, by galaxy.yml's build_ignore (fnmatch patterns, a directory's pattern covering what it
holds). `make sanity` runs ansible-test on exactly these: the sandbox, the benchmarks and the
scripts are development tools, not collection content, and ruff checks them."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern) for pattern in patterns for prefix in prefixes)


def main() -> int:
    patterns = list(yaml.safe_load((ROOT / "galaxy.yml").read_text()).get("build_ignore") or [])
    paths = [p for p in sys.stdin.buffer.read().decode().split("\0") if p]
    sys.stdout.write("".join(p + "\0" for p in paths if not ignored(p, patterns)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
