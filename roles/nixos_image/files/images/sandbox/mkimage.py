"""Build the sandbox images: small, real, bootable images of the real formats.

Runs as a Nix builder on the builder host with the host's python3 and tools (Nix runs
with `sandbox = false` there; no nixpkgs, no network). The Debian packages that go into
the images are read from a directory the sandbox's builder base image carries
(NIXFORGE_SANDBOX_DEBS, default /usr/share/nixforge-sandbox/debs; fetched through the
machine's Debian mirror when that base image is built, never downloaded here).

  mkimage.py sd OUT [MODULE]  -> OUT/sd-image/<name>.img.zst
      MBR (disk id 0x2178694E), FAT32 firmware partition (0x0C, FIRMWARE) and a bootable
      ext4 root (NIXOS_SD) holding /boot/extlinux/extlinux.conf, as nixpkgs' sd-image.nix.
  mkimage.py do OUT [MODULE]  -> OUT/nixos.qcow2.gz
      gzip of a qcow2 of an MBR disk: GRUB (i386-pc) in the MBR and its gap, one bootable
      ext4 partition (label nixos) with Debian's cloud kernel, an initramfs loading the
      virtio drivers, busybox as init (DHCP, metadata) and dropbear as SSH server.

Both write /etc/nixforge-image (first line `nixforge sandbox image (KIND)`, then one
`module: FILE sha256:HEX` line per file of the user's NixOS module) and
OUT/nix-support/hydra-build-products, as nixpkgs' image builders do. Module switches:
`# nixforge-sandbox-build-seconds: N` (the build lasts N more seconds) and
`# nixforge-sandbox-break-init: true` (an image whose init fails: no SSH ever).

Deterministic: the same inputs and the same tool versions (the builder's Debian suite)
give the same bytes (fixed UUIDs, hash seeds, volume ids, time stamps, owners, and a
sorted fill order). Nothing here needs root: file systems are made in image files
(`mke2fs` then `debugfs`, `mkfs.vfat` then `mcopy`) and the boot sector is written in Python.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import lzma
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

MIB = 1024 * 1024
SECTOR = 512
# nixpkgs' sd-image.nix gives its images this MBR disk identifier ("Nixx" backwards),
# its root file system this UUID and its firmware partition this volume id.
SD_DISK_ID = 0x2178694E
SD_ROOT_UUID = "44444444-4444-4444-8888-888888888888"
SD_FIRMWARE_ID = "2178694E"
DO_DISK_ID = 0x6E786667
DO_ROOT_UUID = "6e786667-0000-4000-8000-000000000001"
# Every file in the images gets this time (2000-01-01 UTC): FAT cannot store 1970.
EPOCH = 946684800
DEBS = "/usr/share/nixforge-sandbox/debs"
GRUB_DIR = "/usr/lib/grub/i386-pc"
# The compressed images must be larger than two 5 MB B2 parts (10.5 MB) so that every
# sandbox upload takes B2's large-file path with >= 3 parts.
MIN_COMPRESSED = 11 * MIB
# Debian's cloud kernel has ext4 built in, virtio (some or all) as modules: load order by
# dependency. Debian 12's kernel has them all as modules; 13's builds the core, ring and
# PCI transport in: a module the package lacks must be built in (REQUIRED: or in config).
VIRTIO_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio-rng",
)
REQUIRED_DRIVERS = {
    "virtio_blk": "CONFIG_VIRTIO_BLK",
    "virtio_net": "CONFIG_VIRTIO_NET",
    "virtio_pci": "CONFIG_VIRTIO_PCI",
}
# What GRUB's core.img needs to read grub.cfg from the ext4 partition and boot Linux.
GRUB_MODULES = ("biosdisk", "part_msdos", "ext2", "normal", "linux", "serial", "terminal", "echo", "test")


# ---------------------------------------------------------------- the user's module


def module_files(path: str) -> List[Tuple[str, str]]:
    """(relative name, full path) of every file of the module, in a stable order."""
    if not path:
        return []
    if os.path.isfile(path):
        return [(os.path.basename(path), path)]
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        files += [(os.path.relpath(os.path.join(root, n), path), os.path.join(root, n)) for n in sorted(names)]
    return files


def module_lines(path: str) -> str:
    """One line per file of the user's NixOS module: its path and sha256."""
    files = module_files(path)
    if not files:
        return "module: none\n"
    lines = []
    for rel, full in files:
        with open(full, "rb") as fh:
            lines.append("module: %s sha256:%s\n" % (rel, hashlib.sha256(fh.read()).hexdigest()))
    return "".join(lines)


def module_switch(path: str, name: str) -> Optional[str]:
    """The value of a `# nixforge-sandbox-NAME: VALUE` line in the module's entry file."""
    entry = path if os.path.isfile(path or "") else os.path.join(path or "", "default.nix")
    if not path or not os.path.isfile(entry):
        return None
    prefix = "# nixforge-sandbox-%s:" % name
    with open(entry, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip().startswith(prefix):
                return line.split(":", 1)[1].strip()
    return None


def build_seconds(path: str) -> float:
    """`# nixforge-sandbox-build-seconds: N` makes the build last N seconds, as a real
    image build does, so that tests can hit a builder mid-build."""
    return float(module_switch(path, "build-seconds") or 0)


def break_init(path: str) -> bool:
    """`# nixforge-sandbox-break-init: true`: an image whose init fails (no SSH ever)."""
    return (module_switch(path, "break-init") or "").lower() in ("true", "yes", "1")


# ---------------------------------------------------------------- pure byte formats


def mbr(disk_id: int, partitions: Sequence[Tuple[int, int, int, bool]], boot_code: bytes = b"") -> bytes:
    """A classic MBR: partitions are (start_lba, sectors, type, bootable)."""
    sector = bytearray(SECTOR)
    code = boot_code[:440]  # the disk id and the partition table follow the boot code
    sector[: len(code)] = code
    struct.pack_into("<I", sector, 440, disk_id)
    for index, (start, count, ptype, bootable) in enumerate(partitions):
        # CHS fields set to the LBA-only marker (0xFE 0xFF 0xFF), as modern tools do.
        entry = struct.pack("<B3sB3sII", 0x80 if bootable else 0, b"\xfe\xff\xff", ptype, b"\xfe\xff\xff", start, count)
        sector[446 + 16 * index : 446 + 16 * (index + 1)] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


# Offsets in GRUB's boot.img (include/grub/i386/pc/boot.h).
GRUB_KERNEL_SECTOR = 0x5C
GRUB_BOOT_DRIVE = 0x64
GRUB_DRIVE_CHECK = 0x66
GRUB_BPB = (0x03, 0x5A)
GRUB_TABLE = (0x1B8, 0x200)  # disk id, partition table, signature: kept from the MBR
# core.img is loaded at 0x8000; its second sector onwards at segment 0x820.
GRUB_BLOCK_SEGMENT = 0x820


def grub_boot_sector(boot_img: bytes, disk_mbr: bytes, core_lba: int) -> bytes:
    """GRUB's boot.img made the MBR of this disk, as grub-bios-setup does: the disk's own
    BPB area, disk id and partition table kept; the first sector of core.img at
    `core_lba`; boot drive taken from the BIOS (0xFF); the floppy check jump replaced by
    NOPs (a hard disk)."""
    if len(boot_img) != SECTOR or len(disk_mbr) != SECTOR:
        raise ValueError("boot.img and the MBR must be one sector each")
    sector = bytearray(boot_img)
    sector[GRUB_BPB[0] : GRUB_BPB[1]] = disk_mbr[GRUB_BPB[0] : GRUB_BPB[1]]
    sector[GRUB_TABLE[0] : GRUB_TABLE[1]] = disk_mbr[GRUB_TABLE[0] : GRUB_TABLE[1]]
    struct.pack_into("<Q", sector, GRUB_KERNEL_SECTOR, core_lba)
    sector[GRUB_BOOT_DRIVE] = 0xFF
    sector[GRUB_DRIVE_CHECK : GRUB_DRIVE_CHECK + 2] = b"\x90\x90"
    return bytes(sector)


def grub_core_embedded(core_img: bytes, core_lba: int) -> bytes:
    """core.img padded to whole sectors with the blocklist of its first sector (GRUB's
    diskboot.img) naming where the rest lies: contiguous after `core_lba`, as
    grub-bios-setup writes it when it embeds core.img in the MBR gap."""
    sectors = (len(core_img) + SECTOR - 1) // SECTOR
    core = bytearray(core_img.ljust(sectors * SECTOR, b"\0"))
    entry = SECTOR - 12  # struct grub_boot_blocklist {u64 start; u16 len; u16 segment}, packed
    core[entry - 12 : entry] = bytes(12)  # the next (lower) entry terminates the list
    struct.pack_into("<QHH", core, entry, core_lba + 1, sectors - 1, GRUB_BLOCK_SEGMENT)
    return bytes(core)


def cpio_newc(entries: Iterable[Tuple[str, int, bytes]]) -> bytes:
    """An initramfs archive (cpio "newc") of (name, mode, data) entries: data is a
    symlink's target for S_IFLNK, empty for directories; a character device is given
    as mode S_IFCHR with data `major:minor`."""
    out = []

    def pad(length: int) -> bytes:
        return b"\0" * (-length % 4)

    for ino, (name, mode, data) in enumerate([*list(entries), ("TRAILER!!!", 0, b"")], start=1):
        rdev = (0, 0)
        if mode & 0o170000 == 0o020000:
            rdev, data = tuple(int(x) for x in data.decode().split(":")), b""
        fields = (ino, mode, 0, 0, 1, EPOCH, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        out += [header, name.encode() + b"\0", pad(len(header) + len(name) + 1), data, pad(len(data))]
    return b"".join(out)


def padding(seed: bytes, size: int) -> bytes:
    """`size` bytes no compressor can shrink, the same for the same seed."""
    return hashlib.shake_256(b"nixforge-sandbox-padding\0" + seed).digest(size)


def qcow2(raw: bytes, cluster_bits: int = 16) -> bytes:
    """A qcow2 (version 2) image of raw: only non-zero clusters are allocated."""
    cluster = 1 << cluster_bits
    size = len(raw)
    l2_entries = cluster // 8
    n_clusters = (size + cluster - 1) // cluster
    l1_size = (n_clusters + l2_entries - 1) // l2_entries
    zero = bytes(cluster)
    data_clusters = [i for i in range(n_clusters) if raw[i * cluster : (i + 1) * cluster].rstrip(b"\0")]
    # Layout: 0 header, 1 refcount table, 2 refcount block, 3.. L1, then L2 tables, then data.
    l1_clusters = (l1_size * 8 + cluster - 1) // cluster
    l1_offset = 3 * cluster
    l2_first = 3 + l1_clusters
    data_first = l2_first + l1_size
    total_clusters = data_first + len(data_clusters)
    if total_clusters > cluster // 2:
        raise SystemExit("image too large for one refcount block; use a smaller disk")
    copied = 1 << 63
    l1 = bytearray(l1_clusters * cluster)
    l2 = bytearray(l1_size * cluster)
    for index in range(l1_size):
        struct.pack_into(">Q", l1, index * 8, ((l2_first + index) * cluster) | copied)
    for position, guest in enumerate(data_clusters):
        struct.pack_into(">Q", l2, guest * 8, ((data_first + position) * cluster) | copied)
    refcount_table = bytearray(cluster)
    struct.pack_into(">Q", refcount_table, 0, 2 * cluster)
    refcount_block = bytearray(cluster)
    for index in range(total_clusters):
        struct.pack_into(">H", refcount_block, index * 2, 1)
    header = bytearray(cluster)
    struct.pack_into(
        ">4sIQIIQIIQQIIQ",
        header,
        0,
        b"QFI\xfb",  # magic
        2,  # version
        0,  # backing file offset
        0,  # backing file name size
        cluster_bits,
        size,  # virtual size
        0,  # no encryption
        l1_size,
        l1_offset,
        cluster,  # refcount table offset
        1,  # refcount table clusters
        0,  # snapshots
        0,  # snapshots offset
    )
    parts = [bytes(header), bytes(refcount_table), bytes(refcount_block), bytes(l1), bytes(l2)]
    parts += [raw[guest * cluster : (guest + 1) * cluster].ljust(cluster, zero[:1]) for guest in data_clusters]
    return b"".join(parts)


def partition_layout(first_mib: int, sizes_mib: Sequence[int]) -> List[Tuple[int, int]]:
    """(start sector, sectors) of consecutive partitions, the first at `first_mib` MiB."""
    layout, start = [], first_mib * MIB // SECTOR
    for size in sizes_mib:
        layout.append((start, size * MIB // SECTOR))
        start += size * MIB // SECTOR
    return layout


def fs_size_mib(tree_bytes: int, minimum: int = 16) -> int:
    """A file system size for `tree_bytes` of files: room for metadata and a journal."""
    return max(minimum, -(-(tree_bytes * 5 // 4) // MIB) + 24)


def extlinux_conf(label: str, kernel: str, initrd: str, fdtdir: str, append: str) -> str:
    """/boot/extlinux/extlinux.conf as nixpkgs' extlinux-conf-builder writes it."""
    return (
        "# Generated file, all changes will be lost on nixos-rebuild!\n\n"
        "# Change this to e.g. nixos-42 to temporarily boot to an older configuration.\n"
        "DEFAULT nixos-default\n\n"
        "MENU TITLE ------------------------------------------------------------\n"
        "TIMEOUT 50\n\n"
        "LABEL nixos-default\n"
        "  MENU LABEL %s\n"
        "  LINUX %s\n"
        "  INITRD %s\n"
        "  APPEND %s\n"
        "  FDTDIR %s\n" % (label, kernel, initrd, append, fdtdir)
    )


# ---------------------------------------------------------------- tools and trees


def run(argv: Sequence[str], env: Optional[Dict[str, str]] = None, stdin: Optional[bytes] = None) -> bytes:
    """Run a tool; its own error output names what failed."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, env=full_env, check=False)
    if proc.returncode != 0:
        raise SystemExit("%s failed (exit %d): %s" % (argv[0], proc.returncode, proc.stderr.decode(errors="replace")))
    return proc.stdout


def find_deb(debs: str, pattern: str) -> str:
    found = sorted(glob.glob(os.path.join(debs, pattern)))
    if not found:
        raise SystemExit(
            "no %s in %s: the sandbox builder base image carries these Debian packages "
            "(tests/sandbox/nfsandbox/hosts/rootfs.py, IMAGE_DEBS); set NIXFORGE_SANDBOX_DEBS "
            "to a directory holding them" % (pattern, debs)
        )
    return found[-1]


def extract_deb(deb: str, dest: str, members: Sequence[str] = ()) -> None:
    """Unpack a .deb's files (all, or those matching the tar wildcards `members`)."""
    tar = ["tar", "-x", "-C", dest, "--no-same-owner"] + (["--wildcards", *list(members)] if members else [])
    data = run(["dpkg-deb", "--fsys-tarfile", deb])
    run(tar, stdin=data)


def write(path: str, data: Union[str, bytes], mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)


def tree_size(root: str) -> int:
    total = 0
    for base, _dirs, names in os.walk(root):
        total += sum(os.lstat(os.path.join(base, n)).st_size for n in names)
    return total


def settle_times(root: str) -> None:
    """Every file's time stamps = EPOCH, so the file systems hold no build time."""
    for base, dirs, names in os.walk(root):
        for name in dirs + names:
            os.utime(os.path.join(base, name), (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(root, (EPOCH, EPOCH))


def mke2fs(tree: str, image: str, size_mib: int, label: str, uuid: str) -> None:
    """An ext4 file system of `tree`, made without root privileges, deterministically."""
    # E2FSPROGS_FAKE_TIME: the superblock's times; hash_seed: directory hashes.
    fake_time = {"E2FSPROGS_FAKE_TIME": str(EPOCH)}
    options = ["-q", "-F", "-t", "ext4", "-L", label, "-U", uuid, "-m", "0", "-I", "256"]
    options += ["-E", "hash_seed=%s,root_owner=0:0" % uuid]
    run(["mke2fs", *options, image, "%dM" % size_mib], env=fake_time)
    # Filled by debugfs in sorted order, not with `mke2fs -d`: that copies in the source
    # directory's readdir order (which differs between file systems, so inode numbers and
    # the image bytes would differ between a tmpfs and an overlayfs), each file's owner
    # (Nix builds as a nixbld user) and its ctime (which nobody can set).
    run(["debugfs", "-w", "-f", "-", image], env=fake_time, stdin="\n".join(populate_commands(tree)).encode())


def populate_commands(tree: str) -> List[str]:
    """debugfs commands creating `tree` in sorted order: owner root, times EPOCH, modes kept."""
    commands, paths = ["sif / mode 040755"], ["/"]
    for base, dirs, names in os.walk(tree):
        dirs.sort()
        for name in sorted(dirs + names):
            full = os.path.join(base, name)
            path = "/" + os.path.relpath(full, tree)
            if '"' in path or "\n" in path:
                raise SystemExit("cannot put %r in the image (quote or newline in the name)" % path)
            info = os.lstat(full)
            if stat.S_ISLNK(info.st_mode):
                commands.append('symlink "%s" "%s"' % (path, os.readlink(full)))
            elif stat.S_ISDIR(info.st_mode):
                commands += ['mkdir "%s"' % path, 'sif "%s" mode 0%o' % (path, info.st_mode)]
            elif stat.S_ISREG(info.st_mode):
                commands += ['write "%s" "%s"' % (full, path), 'sif "%s" mode 0%o' % (path, info.st_mode)]
            else:
                raise SystemExit("cannot put %s in the image: only files, directories and symlinks" % path)
            paths.append(path)
    for path in paths:
        for field in ("atime", "ctime", "mtime", "crtime"):
            commands += ['sif "%s" %s @%d' % (path, field, EPOCH), 'sif "%s" %s_extra 0' % (path, field)]
        commands += ['sif "%s" uid 0' % path, 'sif "%s" gid 0' % path]
    return commands


def mkfat(tree: str, image: str, size_mib: int, label: str, volume_id: str) -> None:
    """A FAT32 file system of `tree`: mkfs.vfat --invariant, then mcopy of each entry."""
    settle_times(tree)
    with open(image, "wb") as fh:
        fh.truncate(size_mib * MIB)
    run(["mkfs.vfat", "--invariant", "-F", "32", "-S", "512", "-s", "1", "-i", volume_id, "-n", label, image])
    entries = [os.path.join(tree, name) for name in sorted(os.listdir(tree))]
    if entries:
        # -m keeps the files' times (EPOCH); SOURCE_DATE_EPOCH fixes those mtools sets itself.
        env = {"SOURCE_DATE_EPOCH": str(EPOCH), "MTOOLS_SKIP_CHECK": "1"}
        run(["mcopy", "-psvm", "-i", image, *entries, "::"], env=env)


def busybox_links(root: str, busybox: str) -> None:
    """One symlink per applet of busybox-static (as `busybox --install -s`)."""
    for applet in run([busybox, "--list-full"]).decode().split():
        link = os.path.join(root, applet)
        if not os.path.lexists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink("/bin/busybox", link)


def prune(root: str) -> None:
    """Documentation and translations are of no use in the image."""
    for sub in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/lintian", "usr/share/bug"):
        shutil.rmtree(os.path.join(root, sub), ignore_errors=True)


def merge_usr(root: str) -> None:
    """Debian 13's packages ship files under /usr only (merged /usr): give the image the
    /bin, /sbin, /lib and /lib64 links that dpkg-deb -x does not create."""
    for name in ("bin", "sbin", "lib", "lib64"):
        path = os.path.join(root, name)
        if not os.path.lexists(path) and os.path.isdir(os.path.join(root, "usr", name)):
            os.symlink("usr/" + name, path)
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    if not os.path.lexists(os.path.join(root, "bin", "busybox")):
        raise SystemExit("busybox-static did not provide /bin/busybox")


def disk(disk_id: int, parts: Sequence[Tuple[int, int, int, bool, str]], total_sectors: int) -> bytearray:
    """Raw disk bytes: the MBR and each partition's file system image at its place."""
    raw = bytearray(total_sectors * SECTOR)
    raw[0:SECTOR] = mbr(disk_id, [(s, n, t, b) for s, n, t, b, _image in parts])
    for start, count, _ptype, _boot, image in parts:
        with open(image, "rb") as fh:
            data = fh.read()
        if len(data) > count * SECTOR:
            raise SystemExit("file system %s larger than its partition" % image)
        raw[start * SECTOR : start * SECTOR + len(data)] = data
    return raw


def products(out: str, kind: str, path: str) -> None:
    write(os.path.join(out, "nix-support", "hydra-build-products"), "file %s %s\n" % (kind, path))


def marker(kind: str, module: str) -> str:
    return "nixforge sandbox image (%s)\n%s" % (kind, module_lines(module))


# ---------------------------------------------------------------- the SD image


def sd_image(out: str, module: str, work: str) -> None:
    """nixpkgs' sd-image.nix layout: 8 MiB gap, FAT32 firmware, bootable ext4 root.

    The image is for aarch64 boards and never booted in the sandbox (no aarch64 machine):
    its file systems and boot configuration are real, the kernel and firmware files are
    stand-ins of their usual size (padding, see below)."""
    label = marker("sd", module)
    seed = hashlib.sha256(label.encode()).digest()
    firmware, root = os.path.join(work, "firmware"), os.path.join(work, "root")
    write(os.path.join(firmware, "config.txt"), "[all]\narm_64bit=1\nenable_uart=1\navoid_warnings=1\n")
    write(os.path.join(firmware, "nixforge-image"), label)
    write(os.path.join(root, "etc", "nixforge-image"), label)
    for sub in ("nix/store", "dev", "proc", "sys", "tmp", "run", "root"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    # Stand-in kernel: incompressible and derived from the module, so the image is as big
    # as a real one compresses to (> two 5 MB B2 parts) and differs per module.
    write(os.path.join(root, "boot", "nixos", "sandbox-Image"), padding(seed, MIN_COMPRESSED))
    write(os.path.join(root, "boot", "nixos", "sandbox-initrd"), padding(seed + b"initrd", 64 * 1024))
    os.makedirs(os.path.join(root, "boot", "nixos", "sandbox-dtbs"), exist_ok=True)
    init = "/sbin/init-broken" if break_init(module) else "/sbin/init"
    conf = extlinux_conf(
        "NixOS - Default (nixforge sandbox)",
        "../nixos/sandbox-Image",
        "../nixos/sandbox-initrd",
        "../nixos/sandbox-dtbs",
        "init=%s console=ttyS0,115200n8 console=tty0 loglevel=4" % init,
    )
    write(os.path.join(root, "boot", "extlinux", "extlinux.conf"), conf)
    # FAT32 needs >= 65525 clusters: with 512-byte clusters that is 33 MiB and more.
    fat_mib, root_mib = 40, fs_size_mib(tree_size(root))
    mkfat(firmware, os.path.join(work, "firmware.img"), fat_mib, "FIRMWARE", SD_FIRMWARE_ID)
    mke2fs(root, os.path.join(work, "root.img"), root_mib, "NIXOS_SD", SD_ROOT_UUID)
    (fw_start, fw_len), (root_start, root_len) = partition_layout(8, [fat_mib, root_mib])
    parts = [
        (fw_start, fw_len, 0x0C, False, os.path.join(work, "firmware.img")),
        (root_start, root_len, 0x83, True, os.path.join(work, "root.img")),
    ]
    raw = disk(SD_DISK_ID, parts, root_start + root_len)
    os.makedirs(os.path.join(out, "sd-image"))
    path = os.path.join(out, "sd-image", "nixos-sd-image-sandbox-aarch64-linux.img.zst")
    run(["zstd", "-q", "-T1", "-3", "--no-progress", "-o", path], stdin=bytes(raw))
    products(out, "sd-image", path)


# ---------------------------------------------------------------- the DigitalOcean image


def do_tree(root: str, module: str, debs: str, guest: str, work: str) -> None:
    """The root file system: Debian's cloud kernel, busybox-static, dropbear and its
    libraries (from the .debs), the initramfs and the guest scripts."""
    kernel_deb = find_deb(debs, "linux-image-*-cloud-amd64_*.deb")
    kernel_tree = os.path.join(work, "kernel")
    os.makedirs(kernel_tree)
    patterns = ["./boot/vmlinuz-*", "./boot/config-*", "*virtio*.ko*", "*failover.ko*"]
    extract_deb(kernel_deb, kernel_tree, patterns)
    os.makedirs(os.path.join(root, "boot"), exist_ok=True)
    for name in os.listdir(os.path.join(kernel_tree, "boot")):
        shutil.copy(os.path.join(kernel_tree, "boot", name), os.path.join(root, "boot", name))
        if name.startswith("vmlinuz-"):
            os.symlink(name, os.path.join(root, "boot", "vmlinuz"))
    for pattern in ("busybox-static_*.deb", "dropbear-bin_*.deb", "libc6_*.deb", "libcrypt1_*.deb"):
        extract_deb(find_deb(debs, pattern), root)
    for pattern in ("libtomcrypt1_*.deb", "libtommath1_*.deb", "libgmp10_*.deb", "zlib1g_*.deb"):
        extract_deb(find_deb(debs, pattern), root)
    prune(root)
    merge_usr(root)
    busybox_links(root, os.path.join(root, "bin", "busybox"))
    write(os.path.join(root, "boot", "initrd.img"), initramfs(kernel_tree, os.path.join(root, "bin", "busybox"), guest))
    with open(os.path.join(guest, "init")) as fh:
        init = fh.read()
    if break_init(module):
        init = (
            "#!/bin/sh\n# nixforge-sandbox-break-init: true -- an init that fails on purpose.\n"
            'echo "nixforge-sandbox: init failed on purpose (nixforge-sandbox-break-init)"\nexit 1\n'
        )
    os.remove(os.path.join(root, "sbin", "init"))  # busybox's link: our script is init
    write(os.path.join(root, "sbin", "init"), init, 0o755)
    write(
        os.path.join(root, "etc", "nixforge", "udhcpc.script"), open(os.path.join(guest, "udhcpc.script")).read(), 0o755
    )
    write(os.path.join(root, "etc", "inittab"), open(os.path.join(guest, "inittab")).read())
    write(os.path.join(root, "etc", "passwd"), "root:*:0:0:root:/root:/bin/sh\n")
    write(os.path.join(root, "etc", "group"), "root:x:0:\n")
    write(os.path.join(root, "etc", "shadow"), "root:*:19000:0:99999:7:::\n", 0o600)
    write(os.path.join(root, "etc", "shells"), "/bin/sh\n")
    write(os.path.join(root, "etc", "hostname"), "nixos\n")
    write(os.path.join(root, "etc", "nixforge-image"), marker("do", module))
    for sub in ("dev", "proc", "sys", "tmp", "run", "root", "etc/dropbear", "var/log"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    os.chmod(os.path.join(root, "root"), 0o700)


def initramfs(kernel_tree: str, busybox: str, guest: str) -> bytes:
    """gzip'd cpio: busybox, the virtio modules in load order and the initramfs /init."""
    modules = {}
    for path in glob.glob(os.path.join(kernel_tree, "**", "*.ko*"), recursive=True):
        modules[os.path.basename(path).split(".ko")[0]] = path
    order = [m for m in VIRTIO_MODULES if m in modules]
    config = "".join(open(p).read() for p in glob.glob(os.path.join(kernel_tree, "boot", "config-*")))
    missing = [m for m, symbol in REQUIRED_DRIVERS.items() if m not in modules and symbol + "=y" not in config]
    if missing:
        raise SystemExit("the kernel package has neither modules nor built-in drivers for %s" % ", ".join(missing))
    with open(busybox, "rb") as fh:
        entries: List[Tuple[str, int, bytes]] = [("bin", 0o40755, b""), ("bin/busybox", 0o100755, fh.read())]
    entries += [("dev", 0o40755, b""), ("dev/console", 0o20600, b"5:1"), ("modules", 0o40755, b"")]
    for name in order:
        with open(modules[name], "rb") as fh:
            data = fh.read()
        # Debian 13 compresses its modules; busybox's insmod wants them plain.
        entries.append(
            ("modules/%s.ko" % name, 0o100644, lzma.decompress(data) if modules[name].endswith(".xz") else data)
        )
    entries.append(("modules/order", 0o100644, "".join(m + "\n" for m in order).encode()))
    with open(os.path.join(guest, "initramfs-init"), "rb") as fh:
        entries.append(("init", 0o100755, b"#!/bin/busybox sh\n" + fh.read()))
    return gzip.compress(cpio_newc(entries), compresslevel=1, mtime=0)


def grub_core(work: str) -> bytes:
    """GRUB's core.img for i386-pc reading /boot/grub of the first partition."""
    core = os.path.join(work, "core.img")
    run(
        [
            "grub-mkimage",
            "-O",
            "i386-pc",
            "-d",
            GRUB_DIR,
            "-o",
            core,
            "-p",
            "(hd0,msdos1)/boot/grub",
            *list(GRUB_MODULES),
        ]
    )
    with open(core, "rb") as fh:
        return fh.read()


def do_image(out: str, module: str, debs: str, guest: str, work: str) -> None:
    """One bootable ext4 partition (label nixos) from 1 MiB; GRUB in the MBR and its gap."""
    root = os.path.join(work, "root")
    do_tree(root, module, debs, guest, work)
    write(os.path.join(root, "boot", "grub", "grub.cfg"), open(os.path.join(guest, "grub.cfg")).read())
    core = grub_core_embedded(grub_core(work), 1)
    if len(core) > (2048 - 1) * SECTOR:
        raise SystemExit("GRUB's core.img (%d bytes) does not fit the 1 MiB MBR gap" % len(core))
    root_mib = fs_size_mib(tree_size(root), 64)
    mke2fs(root, os.path.join(work, "root.img"), root_mib, "nixos", DO_ROOT_UUID)
    ((start, count),) = partition_layout(1, [root_mib])
    raw = disk(DO_DISK_ID, [(start, count, 0x83, True, os.path.join(work, "root.img"))], start + count)
    with open(os.path.join(GRUB_DIR, "boot.img"), "rb") as fh:
        raw[0:SECTOR] = grub_boot_sector(fh.read(), bytes(raw[0:SECTOR]), 1)
    raw[SECTOR : SECTOR + len(core)] = core
    os.makedirs(out)
    path = os.path.join(out, "nixos.qcow2.gz")
    with open(path, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=1) as gz:
        gz.write(qcow2(bytes(raw)))
    if os.path.getsize(path) < MIN_COMPRESSED:
        # The kernel alone is larger than this today; say so if a Debian update changes it.
        raise SystemExit(
            "nixos.qcow2.gz is %d bytes, below the %d the sandbox promises" % (os.path.getsize(path), MIN_COMPRESSED)
        )
    products(out, "qcow2", path)


def main(argv: Sequence[str]) -> None:
    if len(argv) < 3 or argv[1] not in ("sd", "do"):
        raise SystemExit("usage: mkimage.py sd|do OUT [MODULE]")
    kind, out = argv[1], argv[2]
    module = argv[3] if len(argv) > 3 else ""
    debs = os.environ.get("NIXFORGE_SANDBOX_DEBS") or DEBS
    guest = os.environ.get("NIXFORGE_SANDBOX_GUEST") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "guest"
    )
    time.sleep(build_seconds(module))
    with tempfile.TemporaryDirectory(prefix="nixforge-mkimage-") as work:
        if kind == "sd":
            sd_image(out, module, work)
        else:
            do_image(out, module, debs, guest, work)


if __name__ == "__main__":
    main(sys.argv)
