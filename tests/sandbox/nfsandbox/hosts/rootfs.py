"""The base root filesystem of the builder hosts: a lean Debian, built once, cached.

Faithful to a Debian cloud image where it matters to our roles (sshd, python3, sudo,
systemd + dbus so services and `shutdown +N` work, iproute2 for Ansible's network
facts) and lean everywhere else, because a cold start must fit CI. No Nix: roles
install `nix-bin` with apt, through the sandbox's apt proxy, as on a real Debian AMI.

Cache layout under `config.cache_root()` (outside the repository, shared by all
instances and kept across `down`):

    rootfs/<suite>-<key>.tar.zst   the built image, portable (CI can cache this file)
    base/<suite>-<key>/            unpacked, read-only lower layer of every host overlay

A suite may name a variant, ``<codename>+<variant>``: the same image with the variant's
packages installed (``bookworm+nix``: Nix from Debian, as in a builder AMI a user bakes
once with Packer so that nix_bootstrap has nothing to install).

`key` hashes everything the image is made from (suite, mirror, packages and the
customisation script below), so changing the recipe builds a new image.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..cmd import run
from ..config import cache_root

log = logging.getLogger("nfsandbox.hosts.rootfs")

# Codenames by Debian version. Buster (10) stays selectable so a caller gets a clear
# answer: this machine's mirror answers 404 for it (it moved to archive.debian.org).
SUITES = {"10": "buster", "12": "bookworm", "13": "trixie"}
DEFAULT_SUITE = "bookworm"
# Prepared when an instance comes up: Debian's AMIs and the pre-baked builder AMIs run on these.
UP_SUITES = (DEFAULT_SUITE, "trixie+nix")

PACKAGES = (
    "openssh-server",
    "python3",
    "python3-apt",  # Debian cloud images have it (unattended-upgrades); Ansible's apt module needs it
    "sudo",
    "systemd",
    "systemd-sysv",
    "dbus",  # systemctl/logind/hostnamectl talk over it; `shutdown +N` needs logind
    "iproute2",  # Ansible's default_ipv4 facts
    "procps",  # ps/pgrep, used by service handling
    # what the sandbox image definition (roles/nixos_image/files/images/sandbox) builds
    # its real images with: ext4 and FAT32 from directories without root, zstd, GRUB
    "e2fsprogs",
    "dosfstools",
    "mtools",
    "zstd",
    "grub-common",
    "grub-pc-bin",
)

# Variants: what a pre-baked builder image adds (nix_bootstrap's own package list for the
# Debian install method, multi-user).
VARIANTS = {
    "nix": ("nix-bin", "nix-setup-systemd", "ca-certificates", "git", "rsync", "xz-utils"),
}

# Installs a variant's packages in a chroot of the fresh debootstrap, before CUSTOMIZE
# (which cleans apt's lists and caches). No daemon starts: there is no systemd in a chroot.
INSTALL_VARIANT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get -q update >/dev/null
apt-get -q install -y --no-install-recommends "$@" >/dev/null
"""

# Debian packages the sandbox DigitalOcean image is made of, downloaded into the base
# image at IMAGE_DEBS_DIR (the sandbox flake reads them there): Debian's cloud kernel
# (the package linux-image-cloud-amd64 depends on), busybox-static (init, DHCP, wget)
# and dropbear with the libraries it links.
IMAGE_DEBS_DIR = "/usr/share/nixforge-sandbox/debs"
IMAGE_DEBS = (
    "busybox-static",
    "dropbear-bin",
    "libc6",
    "libcrypt1",
    "libtomcrypt1",
    "libtommath1",
    "libgmp10",
    "zlib1g",
)

# Runs in a chroot of the fresh debootstrap. $1 suite, $2 mirror, $3 security mirror,
# $4 the directory for the image .debs, then the image packages.
CUSTOMIZE = r"""
set -eu
suite=$1 mirror=$2 security=$3 debs=$4
shift 4
# sources like a Debian cloud image's, on the mirror this machine uses
cat > /etc/apt/sources.list <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
# the sandbox image's packages, from the same mirror (the resolver is still the machine's)
apt-get -q update >/dev/null
mkdir -p "$debs"
kernel=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
(cd "$debs" && apt-get -q download "$kernel" "$@" >/dev/null)
chown -R root:root "$debs"
chmod 644 "$debs"/*.deb
# host keys are generated per host at first boot (cloud-init does the same)
rm -f /etc/ssh/ssh_host_*
# an empty machine-id makes systemd derive a per-boot one from nspawn's container uuid
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
# written per host: name, address, resolver
rm -f /etc/hostname /etc/hosts
printf 'nameserver 127.0.0.1\n' > /etc/resolv.conf
# no console is attached to the host (nspawn --console=passive)
systemctl mask console-getty.service >/dev/null 2>&1
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log /var/log/bootstrap.log
"""


def normalize_suite(suite: str) -> str:
    """``12``/``debian-12``/``bookworm`` -> ``bookworm``; a ``+variant`` suffix is kept."""
    name, plus, variant = str(suite).lower().partition("+")
    s = name.removeprefix("debian-").removeprefix("debian")
    if plus and variant not in VARIANTS:
        raise ValueError(f"unknown base image variant {variant!r} (known: {', '.join(VARIANTS)})")
    return SUITES.get(s, s) + (f"+{variant}" if plus else "")


def split_suite(suite: str) -> tuple[str, tuple[str, ...]]:
    """``bookworm+nix`` -> (``bookworm``, the variant's packages)."""
    codename, _plus, variant = suite.partition("+")
    return codename, VARIANTS.get(variant, ())


def recipe_key(suite: str, mirror: str, security: str) -> str:
    recipe = {
        "suite": suite,
        "mirror": mirror,
        "security": security,
        "packages": PACKAGES,
        "customize": CUSTOMIZE,
        "image_debs": [IMAGE_DEBS_DIR, *IMAGE_DEBS],
    }
    extra = split_suite(suite)[1]
    if extra:  # a plain suite's key stays what it was before variants existed
        recipe.update(variant_packages=extra, install_variant=INSTALL_VARIANT)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


class SuiteUnavailable(RuntimeError):
    pass


def check_suite(suite: str, mirror: str) -> None:
    """Fail with a clear message when the mirror does not serve `suite` (e.g. buster: 404)."""
    url = f"{mirror.rstrip('/')}/dists/{suite}/Release"
    req = urllib.request.Request(url, method="HEAD")  # noqa: S310 (http mirror URL from apt sources)
    try:
        with urllib.request.urlopen(req, timeout=20):  # noqa: S310
            return
    except urllib.error.HTTPError as exc:
        hint = " (Debian 10 moved to archive.debian.org)" if suite == "buster" else ""
        raise SuiteUnavailable(
            f"Debian suite {suite!r} is not available on this machine's mirror: {url} answered "
            f"HTTP {exc.code}{hint}. Sandbox hosts can be {', '.join(v for v in SUITES.values() if v != 'buster')}."
        ) from None
    except OSError as exc:
        raise SuiteUnavailable(f"cannot reach the Debian mirror {mirror} to build the {suite} image: {exc}") from None


class BaseImages:
    """Thread- and process-safe access to unpacked base images, building them on demand."""

    def __init__(self, mirror: str, security_mirror: str, root: Path | None = None):
        self.mirror = mirror
        self.security = security_mirror
        self.root = root or cache_root()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def key(self, suite: str) -> str:
        return recipe_key(suite, self.mirror, self.security)

    def tarball(self, suite: str) -> Path:
        return self.root / "rootfs" / f"{suite}-{self.key(suite)}.tar.zst"

    def unpacked(self, suite: str) -> Path:
        return self.root / "base" / f"{suite}-{self.key(suite)}"

    @staticmethod
    def _marker(dest: Path) -> Path:
        return dest.parent / f"{dest.name}.ready"

    def _ready(self, dest: Path) -> bool:
        return self._marker(dest).exists() and dest.is_dir()

    def ensure(self, suite: str) -> Path:
        """Return the unpacked base for `suite`, building and/or unpacking it first."""
        suite = normalize_suite(suite)
        with self._guard:
            lock = self._locks.setdefault(suite, threading.Lock())
        with lock:
            dest = self.unpacked(suite)
            if self._ready(dest):
                return dest
            (self.root / "locks").mkdir(parents=True, exist_ok=True)
            # another sandbox instance may be building the same image right now
            with open(self.root / "locks" / f"{suite}-{self.key(suite)}.lock", "w") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                if self._ready(dest):
                    return dest
                tar = self.tarball(suite)
                if tar.exists():
                    self._unpack(tar, dest)
                else:
                    self._build(suite, tar, dest)
            return dest

    def _build(self, suite: str, tar: Path, dest: Path) -> None:
        """debootstrap + customise, write the cached tarball, and move the tree to `dest`
        (the first start needs no unpacking)."""
        codename, extra = split_suite(suite)
        check_suite(codename, self.mirror)
        started = time.monotonic()
        build = tar.parent / f".build-{tar.name}"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        root = build / "root"
        # downloaded .debs are kept: a recipe change then costs no second download
        debs = self.root / "debs" / codename
        debs.mkdir(parents=True, exist_ok=True)
        log.info("building the %s base image with debootstrap (about a minute, once)", suite)
        try:
            # in a mount namespace of its own: the /proc and /sys debootstrap mounts in the
            # new tree vanish with it even if it is killed half-way
            run(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(PACKAGES)}",
                    f"--cache-dir={debs}",
                    codename,
                    str(root),
                    self.mirror,
                ],
                timeout=1800,
            )
            if extra:
                run(["chroot", str(root), "sh", "-c", INSTALL_VARIANT, "install", *extra], timeout=900)
            run(
                [
                    "chroot",
                    str(root),
                    "sh",
                    "-c",
                    CUSTOMIZE,
                    "customize",
                    codename,
                    self.mirror,
                    self.security,
                    IMAGE_DEBS_DIR,
                    *IMAGE_DEBS,
                ],
                timeout=600,
            )
            partial = build / "image.tar.zst"
            # numeric owners and xattrs so the unpacked tree is identical to the built one
            run(
                [
                    "sh",
                    "-c",
                    'tar --numeric-owner --xattrs --xattrs-include="*" -C "$1" -cf - . | zstd -q -T0 -3 -o "$2"',
                    "tar",
                    str(root),
                    str(partial),
                ],
                timeout=600,
            )
            partial.replace(tar)
            self._install(root, dest, tar)
        finally:
            shutil.rmtree(build, ignore_errors=True)
        log.info("built %s (%.0f MB) in %.1fs", tar.name, tar.stat().st_size / 1e6, time.monotonic() - started)

    def _install(self, tree: Path, dest: Path, tar: Path) -> None:
        self._marker(dest).unlink(missing_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tree.rename(dest)
        # the marker lives beside the tree: inside it, every host would see it as /.ready
        self._marker(dest).write_text(tar.name + "\n")

    def _unpack(self, tar: Path, dest: Path) -> None:
        started = time.monotonic()
        tmp = dest.parent / f".unpack-{dest.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.mkdir(parents=True)
        run(
            [
                "sh",
                "-c",
                'zstd -q -dc "$1" | tar --numeric-owner --xattrs --xattrs-include="*" -C "$2" -xpf -',
                "untar",
                str(tar),
                str(tmp),
            ],
            timeout=600,
        )
        self._install(tmp, dest, tar)
        log.info("unpacked %s in %.1fs", tar.name, time.monotonic() - started)


def current_keys(base: BaseImages) -> set[str]:
    suites = [*SUITES.values()] + [f"{s}+{v}" for s in SUITES.values() for v in VARIANTS]
    return {f"{suite}-{base.key(suite)}" for suite in suites}


def collect_garbage(base: BaseImages) -> list[Path]:
    """Remove images built from older recipes (call only while no instance runs:
    a running host's overlay may use any of them as its lower layer)."""
    keep = current_keys(base)
    removed = []
    for path in sorted((base.root / "base").glob("*")) + sorted((base.root / "rootfs").glob("*.tar.zst")):
        stem = path.name.removesuffix(".tar.zst").removesuffix(".ready")
        if stem in keep or path.name.startswith("."):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def image_debs(suite: str = DEFAULT_SUITE) -> Path:
    """The .debs of the sandbox DigitalOcean image as the builder hosts of `suite` carry
    them (built with the base image if need be): tests that run mkimage.py on the
    controller point NIXFORGE_SANDBOX_DEBS here to get the builders' bytes."""
    from .aptproxy import machine_mirrors

    base = BaseImages(*machine_mirrors())
    return base.ensure(suite) / IMAGE_DEBS_DIR.lstrip("/")
