"""Make ``ansible_collections.nixforge.images`` importable for unit tests.

``make collection`` links the checkout into ``.build/collections``; without it (a bare
``pytest tests/unit``) a temporary link is made the same way.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _collections_root() -> Path:
    built = REPO / ".build" / "collections"
    if (built / "ansible_collections" / "nixforge" / "images").exists():
        return built
    root = Path(tempfile.mkdtemp(prefix="nixforge-unit-"))
    (root / "ansible_collections" / "nixforge").mkdir(parents=True)
    os.symlink(REPO, root / "ansible_collections" / "nixforge" / "images")
    return root


_root = str(_collections_root())
if _root not in sys.path:
    sys.path.insert(0, _root)
