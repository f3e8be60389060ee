"""Install the real awx.awx collection where Ansible and ansible-lint find it.

awx.awx is not reachable through Galaxy here, but the community `ansible` package on the
package index ships it. pip downloads that wheel (pinned: ANSIBLE_PACKAGE) once into the
shared cache, only `ansible_collections/awx/awx/` is taken out of it (kept in the cache),
and that tree is copied into the collections path given on the command line.

Usage: awx_collection.py COLLECTIONS_PATH
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "sandbox"))

from nfsandbox.config import cache_root  # noqa: E402

# The newest community package that still installs on Python 3.11 (Debian 12), so one
# download serves every matrix entry; awx.awx itself is pure Ansible content.
ANSIBLE_PACKAGE = "ansible==12.3.0"
PREFIX = "ansible_collections/awx/awx/"


def cached_collection() -> Path:
    """<cache>/awx/<package>/awx: the extracted collection, downloaded once."""
    base = cache_root() / "awx" / ANSIBLE_PACKAGE.replace("==", "-")
    tree = base / "awx"
    if (tree / "MANIFEST.json").exists():
        return tree
    wheels = base / "download"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(wheels),
            ANSIBLE_PACKAGE,
        ],
        check=True,
    )
    (wheel,) = wheels.glob("ansible-*.whl")
    partial = base / ".awx"
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith(PREFIX) and not name.endswith("/"):
                target = partial / name[len(PREFIX) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(name))
    if not (partial / "MANIFEST.json").exists():
        raise SystemExit(f"{wheel.name} holds no awx.awx collection ({PREFIX}MANIFEST.json)")
    shutil.rmtree(tree, ignore_errors=True)
    partial.rename(tree)
    wheel.unlink()  # 50 MB of other collections: only awx.awx is kept
    return tree


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    source = cached_collection()
    dest = Path(sys.argv[1]) / "ansible_collections" / "awx" / "awx"
    version = json.loads((source / "MANIFEST.json").read_text())["collection_info"]["version"]
    if (dest / "MANIFEST.json").exists() and (dest / "MANIFEST.json").read_bytes() == (
        source / "MANIFEST.json"
    ).read_bytes():
        return
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest)
    print(f"awx.awx {version} (from {ANSIBLE_PACKAGE}) installed in {dest.parents[2]}")


if __name__ == "__main__":
    main()
