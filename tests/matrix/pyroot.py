"""A Python 3.12+ controller on a Debian 12 machine, made from the registries it reaches.

ansible-core 2.20 and 2.21 need Python 3.12 or newer on the controller; Debian 12 has 3.11.
This tool makes a Debian 13 (trixie, Python 3.13) root with debootstrap from the machine's
own apt mirror, the way the sandbox makes its base images (tests/sandbox/nfsandbox/hosts/
rootfs.py), and in it one virtualenv per ansible-core version, installed from a wheelhouse
that pip fills for that Python. Commands run in the root through `tests/matrix/in-root` (a
mount namespace + chroot that sees the checkout, /tmp and the sandbox at their own paths).

Cache (outside the repository, beside the sandbox's, kept across runs and clones):

    <cache>/pyroot/trixie-<key>.tar.zst    the root as built, before any virtualenv
    <cache>/pyroot/trixie-<key>/           unpacked; virtualenvs under /opt/nixforge-matrix/
    <cache>/pyroot/wheels/                 the wheelhouse (pip download / pip wheel)

Usage:
    pyroot.py ensure VERSION       build what is missing, write .build/matrix/VERSION/bin/*
    pyroot.py constraints VERSION  re-resolve tests/requirements.txt for VERSION, rewrite
                                   tests/constraints-VERSION.txt
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "sandbox"))

from nfsandbox.config import cache_root  # noqa: E402
from nfsandbox.hosts.aptproxy import machine_mirrors  # noqa: E402
from nfsandbox.hosts.rootfs import check_suite  # noqa: E402

SUITE = "trixie"
# What a controller needs: Python with venv/ensurepip, git for ansible-test and
# ansible-galaxy, certificates for pip, and bindep.txt's controller packages (ssh to the
# builders, rsync/zstd/gzip for artifacts, dosfstools/e2fsprogs for the SD image check, which
# the unit tests use too); mtools and qemu-utils for unit tests that make deps covers on the
# machine. (nix-bin cannot be included: debootstrap does not resolve its perl-dbdabi-94.)
PACKAGES = (
    *("python3", "python3-venv", "git", "ca-certificates"),
    *("openssh-client", "rsync", "zstd", "gzip", "dosfstools", "e2fsprogs", "mtools", "qemu-utils"),
)
CUSTOMIZE = r"""
set -eu
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log /var/log/bootstrap.log
"""
IN_ROOT = REPO / "tests" / "matrix" / "in-root"
VENVS = "/opt/nixforge-matrix"
# The versions that run in the root; 2.19 runs in the project's own virtualenv (.venv).
VERSIONS = ("2.20", "2.21")
TOOLS = (
    "python",
    "pip",
    "pytest",
    "ansible",
    "ansible-playbook",
    "ansible-galaxy",
    "ansible-test",
    "ansible-doc",
    "ansible-inventory",
    "ansible-lint",
    "ansible-builder",
)


def log(msg: str) -> None:
    print(f"pyroot: {msg}", file=sys.stderr, flush=True)


def sh(argv: list[str], **kw: object) -> None:
    subprocess.run(argv, check=True, **kw)


def home() -> Path:
    return cache_root() / "pyroot"


def root_key(mirror: str) -> str:
    recipe = {"suite": SUITE, "mirror": mirror, "packages": PACKAGES, "customize": CUSTOMIZE}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def ensure_root() -> Path:
    """The unpacked root, built with debootstrap (about a minute, once) or unpacked from its
    tarball (seconds)."""
    mirror, _security = machine_mirrors()
    name = f"{SUITE}-{root_key(mirror)}"
    root, tar = home() / name, home() / f"{name}.tar.zst"
    ready = home() / f"{name}.ready"
    if ready.exists():
        return root
    home().mkdir(parents=True, exist_ok=True)
    with open(home() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.exists():
            return root
        started = time.monotonic()
        shutil.rmtree(root, ignore_errors=True)
        if not tar.exists():
            check_suite(SUITE, mirror)
            build = home() / f".build-{name}"
            shutil.rmtree(build, ignore_errors=True)
            log(f"building the {SUITE} controller root with debootstrap (about a minute, once)")
            debs = cache_root() / "debs" / SUITE  # shared with the sandbox's trixie image
            debs.mkdir(parents=True, exist_ok=True)
            sh(
                [
                    *("unshare", "--mount", "--propagation", "private", "debootstrap", "--variant=minbase"),
                    *(f"--include={','.join(PACKAGES)}", f"--cache-dir={debs}", SUITE, str(build), mirror),
                ],
                stdout=subprocess.DEVNULL,
            )
            sh(["chroot", str(build), "sh", "-c", CUSTOMIZE])
            partial = home() / f".{name}.tar.zst"
            sh(
                [
                    "sh",
                    "-c",
                    'tar --numeric-owner -C "$1" -cf - . | zstd -q -T0 -3 -o "$2"',
                    "tar",
                    str(build),
                    str(partial),
                ]
            )
            partial.replace(tar)
            build.rename(root)
        else:
            tmp = home() / f".unpack-{name}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            sh(["sh", "-c", 'zstd -q -dc "$1" | tar --numeric-owner -C "$2" -xpf -', "untar", str(tar), str(tmp)])
            tmp.rename(root)
        ready.write_text(tar.name + "\n")
        log(f"{SUITE} controller root ready in {time.monotonic() - started:.0f} s: {root}")
    return root


def constraints_file(version: str) -> Path:
    return REPO / "tests" / f"constraints-{version}.txt"


def in_root(root: Path, venv: str, *argv: str, binds: str = "") -> None:
    env = None
    if binds:
        import os

        env = {**os.environ, "NIXFORGE_PYROOT_BINDS": binds}
    sh([str(IN_ROOT), str(root), venv, *argv], env=env)


def build_venv(root: Path, venv: str, version: str, constraints: Path | None) -> None:
    """A fresh virtualenv at `venv` (inside the root) with tests/requirements.txt for
    ansible-core `version`, from the wheelhouse (filled first by pip for this Python)."""
    wheels = home() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / venv.lstrip("/"), ignore_errors=True)
    in_root(root, "/usr", "python3", "-m", "venv", venv)
    pins = ["-c", str(constraints)] if constraints else []
    reqs = ["-r", str(REPO / "tests" / "requirements.txt"), f"ansible-core=={version}.*"]
    pip = [f"{venv}/bin/pip", "--disable-pip-version-check", "--no-input"]
    # pip wheel takes what the wheelhouse has and adds what is missing (sdists become wheels)
    in_root(root, venv, *pip, "wheel", "-q", "-w", str(wheels), "-f", str(wheels), *pins, *reqs, binds=str(wheels))
    in_root(root, venv, *pip, "install", "-q", "--no-index", "-f", str(wheels), *pins, *reqs, binds=str(wheels))


def venv_key(version: str) -> str:
    data = (REPO / "tests" / "requirements.txt").read_bytes() + (REPO / "requirements.txt").read_bytes()
    data += constraints_file(version).read_bytes() if constraints_file(version).exists() else b""
    return hashlib.sha256(data).hexdigest()[:12]


def write_wrappers(root: Path, venv: str, version: str) -> Path:
    """.build/matrix/VERSION/bin/<tool>: the tool of the root's virtualenv, as if local."""
    bindir = REPO / ".build" / "matrix" / version / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        script = f'#!/bin/sh\nexec "{IN_ROOT}" "{root}" "{venv}" "{venv}/bin/{tool}" "$@"\n'
        path = bindir / tool
        path.write_text(script)
        path.chmod(0o755)
    return bindir


def ensure(version: str) -> Path:
    if version not in VERSIONS:
        raise SystemExit(f"pyroot: ansible-core {version} runs in .venv; the root serves {', '.join(VERSIONS)}")
    root = ensure_root()
    venv = f"{VENVS}/{version}-{venv_key(version)}"
    stamp = root / venv.lstrip("/") / ".ready"
    if not stamp.exists():
        with open(home() / f"venv-{version}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not stamp.exists():
                started = time.monotonic()
                cons = constraints_file(version)
                build_venv(root, venv, version, cons if cons.exists() else None)
                stamp.write_text("ok\n")
                log(f"ansible-core {version} virtualenv ready in {time.monotonic() - started:.0f} s")
    return write_wrappers(root, venv, version)


def constraints(version: str) -> None:
    """Resolve anew (no constraints) in a scratch virtualenv and freeze it."""
    root = ensure_root()
    venv = f"{VENVS}/scratch-{version}"
    build_venv(root, venv, version, None)
    out = subprocess.run(
        [str(IN_ROOT), str(root), venv, f"{venv}/bin/pip", "freeze", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    head = f"# Exact versions tested with ansible-core {version} on Python 3.13 (pip -c). "
    head += "Regenerate with: make constraints\n"
    constraints_file(version).write_text(head + out)
    shutil.rmtree(root / venv.lstrip("/"), ignore_errors=True)
    log(f"wrote {constraints_file(version).relative_to(REPO)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("ensure", "constraints"))
    parser.add_argument("version", choices=VERSIONS)
    args = parser.parse_args()
    if args.action == "ensure":
        print(ensure(args.version))
    else:
        constraints(args.version)


if __name__ == "__main__":
    main()
