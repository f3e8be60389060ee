# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: a verified sha256 recorded on the file; no stable interface.
"""A verified sha256 remembered on the file itself, so that a multi-GB artifact is hashed once.

``fetch_artifact`` hashes the image while the bytes stream in and compares it with the
builder's sha256. It then records that value in an extended attribute of the file,
together with the file's size, modification time (ns) and inode. ``b2_object`` (and a
re-run of the fetch) read the record back instead of reading the whole file again, but
only while those three are unchanged: any write to the file, or a new file in its place,
makes the record stale and the reader hashes the file as before. This is the size and
mtime check that rsync and make rely on.

A filesystem without user extended attributes (some network filesystems) keeps no
record; readers then always hash. Nothing here raises.
"""

from __future__ import annotations

import os
import re
from typing import Optional

ATTRIBUTE = "user.nixforge.sha256"
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _identity(st: os.stat_result) -> str:
    return "%d %d %d" % (st.st_size, st.st_mtime_ns, st.st_ino)


def record(path: str, sha256: str) -> bool:
    """Remember that `path`, as it is now, has this sha256; False when it cannot be kept."""
    if not SHA256.match(sha256):
        return False
    try:
        value = "%s %s" % (sha256, _identity(os.stat(path)))
        os.setxattr(path, ATTRIBUTE, value.encode("ascii"))
    except (OSError, AttributeError):  # no user xattrs here (or no os.setxattr on this platform)
        return False
    return True


def recorded(path: str) -> Optional[str]:
    """The sha256 recorded for `path`, if the file is still the one it was recorded for."""
    try:
        value = os.getxattr(path, ATTRIBUTE).decode("ascii")
        current = _identity(os.stat(path))
    except (OSError, AttributeError, UnicodeDecodeError):
        return None
    sha256, _sep, identity = value.partition(" ")
    if identity != current or not SHA256.match(sha256):
        return None
    return sha256


def forget(path: str) -> None:
    """Drop the record (tests and benchmarks; a changed file needs no forgetting)."""
    try:
        os.removexattr(path, ATTRIBUTE)
    except (OSError, AttributeError):
        pass
