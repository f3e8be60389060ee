# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: no compatibility promise for anything outside it.
"""The SD image check on the controller, without root: the MBR and the FAT and ext2/3/4
boot sectors are read here, the file systems are checked by their own tools (fsck.vfat -n
on a copy of the small firmware partition, e2fsck -fn and debugfs on the root partition
in place through e2fsprogs' ``file?offset=N`` syntax, so a multi-GB root is never copied).

The parsers are pure functions (unit tested on bytes); check_image() runs the tools.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

SECTOR = 512
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# MBR partition types that hold a FAT file system (the firmware partition; 0xef is an EFI
# system partition), the Linux type of the root, and the ones that mean "not this disk".
FAT_TYPES = {0x01: "FAT12", 0x04: "FAT16 <32M", 0x06: "FAT16", 0x0B: "W95 FAT32", 0x0C: "W95 FAT32 (LBA)"}
FAT_TYPES.update({0x0E: "W95 FAT16 (LBA)", 0xEF: "EFI (FAT)"})
LINUX_TYPE = 0x83
EXTENDED_TYPES = {0x05, 0x0F, 0x85}
GPT_PROTECTIVE = 0xEE
EXT_MAGIC = 0xEF53
# What the check needs on the controller, and the Debian / Fedora package that has it.
TOOLS = {"zstd": "zstd", "fsck.vfat": "dosfstools", "e2fsck": "e2fsprogs", "debugfs": "e2fsprogs"}

Runner = Callable[[Sequence[str], int], Tuple[int, str]]


class ImageError(ValueError):
    """The image is not a sound SD image; the message names the partition and what failed."""


@dataclass
class Partition:
    """One MBR partition: sizes in bytes, the file system as found in its first sectors."""

    number: int
    type_id: int
    start: int
    size: int
    bootable: bool
    type_name: str = ""
    filesystem: str = ""
    label: str = ""
    checks: List[str] = field(default_factory=list)

    def describe(self) -> str:
        """`2: ext4 NIXOS_SD, 1.9 GiB at 38.0 MiB (type 0x83 Linux, bootable)`"""
        what = " ".join(x for x in (self.filesystem or "unchecked", self.label or "(no label)") if x)
        flags = ", bootable" if self.bootable else ""
        return "%d: %s, %s at %s (type 0x%02x %s%s)" % (
            self.number,
            what,
            human(self.size),
            human(self.start),
            self.type_id,
            self.type_name,
            flags,
        )

    def where(self) -> str:
        """For messages: `partition 2 (type 0x83 Linux, ext4 NIXOS_SD, 40.0 MiB at 38.0 MiB)`."""
        found = (", %s %s" % (self.filesystem, self.label or "(no label)")) if self.filesystem else ""
        return "partition %d (type 0x%02x %s%s, %s at %s)" % (
            self.number,
            self.type_id,
            self.type_name,
            found,
            human(self.size),
            human(self.start),
        )

    def as_dict(self) -> Dict[str, object]:
        out = asdict(self)
        out["type"] = "0x%02x" % self.type_id
        out["summary"] = self.describe()
        return out


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return ("%d B" % size) if unit == "B" else "%.1f %s" % (size, unit)
        size /= 1024.0
    return "%d B" % size


def read_mbr(sector: bytes, image_size: int) -> List[Partition]:
    """The primary partitions of an MBR; ImageError when it is not one, or when a partition
    lies outside the image or overlaps another."""
    if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa":
        raise ImageError("no MBR: the first sector does not end with the boot signature 55 aa")
    parts = []
    for index in range(4):
        status, _chs, ptype, _chs_end, start, count = struct.unpack_from("<B3sB3sII", sector, 446 + 16 * index)
        if ptype == 0 or count == 0:
            continue
        if ptype == GPT_PROTECTIVE:
            raise ImageError("a GPT disk (protective MBR type 0xee), not the MBR layout of nixpkgs' sd-image.nix")
        name = FAT_TYPES.get(ptype) or ("Linux" if ptype == LINUX_TYPE else "other")
        part = Partition(index + 1, ptype, start * SECTOR, count * SECTOR, status == 0x80, name)
        if part.start < SECTOR or part.start + part.size > image_size:
            raise ImageError(
                "partition %d (%s at %s) lies outside the image of %s"
                % (part.number, human(part.size), human(part.start), human(image_size))
            )
        parts.append(part)
    for a in parts:
        for b in parts:
            if a.number < b.number and a.start < b.start + b.size and b.start < a.start + a.size:
                raise ImageError("partitions %d and %d overlap" % (a.number, b.number))
    return parts


def fat_info(boot: bytes) -> Tuple[str, str]:
    """(FAT12/FAT16/FAT32, volume label) from a FAT boot sector; ValueError if it is none."""
    if len(boot) < SECTOR or boot[510:512] != b"\x55\xaa":
        raise ValueError("no FAT boot sector (no 55 aa signature)")
    bytes_per_sector, per_cluster, reserved, fats, root_entries, total16 = struct.unpack_from("<HBHBHH", boot, 11)
    fat16_size, total32, fat32_size = (struct.unpack_from("<H", boot, 22)[0], *struct.unpack_from("<II", boot, 32))
    if bytes_per_sector not in (512, 1024, 2048, 4096) or per_cluster == 0 or fats == 0:
        raise ValueError(
            "no FAT boot sector (bytes per sector %d, sectors per cluster %d)" % (bytes_per_sector, per_cluster)
        )
    fat_size = fat16_size or fat32_size
    total = total16 or total32
    root_sectors = (root_entries * 32 + bytes_per_sector - 1) // bytes_per_sector
    clusters = (total - reserved - fats * fat_size - root_sectors) // per_cluster
    # The FAT type follows from the cluster count alone (Microsoft's FAT specification).
    variant = "FAT12" if clusters < 4085 else "FAT16" if clusters < 65525 else "FAT32"
    label_at = 71 if fat16_size == 0 else 43
    label = boot[label_at : label_at + 11].decode("ascii", "replace").strip()
    return variant, "" if label == "NO NAME" else label


def ext_info(superblock: bytes) -> Tuple[str, str, int]:
    """(ext2/ext3/ext4, volume label, file system size in bytes) from the 1024 bytes of an
    ext superblock (found 1024 bytes into the partition); ValueError if it is none."""
    if len(superblock) < 1024 or struct.unpack_from("<H", superblock, 0x38)[0] != EXT_MAGIC:
        raise ValueError("no ext2/3/4 file system (no superblock magic ef53 at byte 1080)")
    blocks_lo, log_block = struct.unpack_from("<I", superblock, 0x04)[0], struct.unpack_from("<I", superblock, 0x18)[0]
    compat, incompat = struct.unpack_from("<II", superblock, 0x5C)
    blocks = blocks_lo
    if incompat & 0x80:  # 64bit: the high half of the block count
        blocks |= struct.unpack_from("<I", superblock, 0x150)[0] << 32
    if log_block > 6:
        raise ValueError("no ext2/3/4 file system (block size 2^(10+%d))" % log_block)
    kind = "ext4" if incompat & (0x40 | 0x200 | 0x80) else "ext3" if compat & 0x4 else "ext2"
    label = superblock[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", "replace")
    return kind, label, blocks * (1024 << log_block)


def run(argv: Sequence[str], timeout: int) -> Tuple[int, str]:
    """Run a check tool: (exit status, stdout and stderr together)."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return 124, "%s did not finish within %d s" % (argv[0], timeout)
    except OSError as exc:
        return 127, "%s: %s" % (argv[0], exc)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def missing_tools() -> List[str]:
    """The tools of TOOLS not on the PATH, each with its package."""
    return ["%s (package %s)" % (tool, pkg) for tool, pkg in TOOLS.items() if shutil.which(tool) is None]


def raw_image(path: str, tmp: str, timeout: int, runner: Runner = run) -> str:
    """The uncompressed image: the file itself, or a sparse zstd -d copy in `tmp`."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != ZSTD_MAGIC:
        return path
    out = os.path.join(tmp, "image.img")
    rc, output = runner(["zstd", "-d", "-q", "-f", "--sparse", "-o", out, path], timeout)
    if rc != 0:
        raise ImageError("zstd could not decompress it (exit %d): %s" % (rc, tail(output)))
    return out


def tail(text: str, lines: int = 14) -> str:
    """The tool's output on one line: its first lines (where e2fsck names the problem) and last."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(kept) > lines:
        kept = [*kept[: lines - 4], "...", *kept[-4:]]
    return " | ".join(kept)


def copy_range(src: str, start: int, size: int, dest: str) -> None:
    """Copy `size` bytes of `src` from `start` into a new sparse file `dest`."""
    block = 1 << 20
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        fin.seek(start)
        left = size
        while left > 0:
            data = fin.read(min(block, left))
            if not data:
                break
            if data.count(0) == len(data):
                fout.seek(len(data), os.SEEK_CUR)  # a hole, as zstd --sparse leaves them
            else:
                fout.write(data)
            left -= len(data)
        fout.truncate(size)


def read_at(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def check_fat(raw: str, part: Partition, tmp: str, timeout: int, runner: Runner = run) -> None:
    """The firmware partition: a FAT boot sector, and fsck.vfat -n finds nothing on a copy."""
    try:
        part.filesystem, part.label = fat_info(read_at(raw, part.start, SECTOR))
    except ValueError as exc:
        raise ImageError("%s holds %s" % (part.where(), exc)) from None
    copy = os.path.join(tmp, "partition-%d.img" % part.number)
    copy_range(raw, part.start, part.size, copy)
    try:
        rc, output = runner(["fsck.vfat", "-n", copy], timeout)
    finally:
        os.unlink(copy)
    part.checks.append("fsck.vfat -n: exit %d" % rc)
    if rc != 0:
        raise ImageError("%s: fsck.vfat -n found errors (exit %d): %s" % (part.where(), rc, tail(output)))


def check_ext(raw: str, part: Partition, files: Sequence[str], timeout: int, runner: Runner = run) -> None:
    """The root partition: an ext superblock whose size fits the partition, e2fsck -fn finds
    nothing, and each of `files` is a regular file on it (debugfs stat)."""
    try:
        part.filesystem, part.label, fs_size = ext_info(read_at(raw, part.start + 1024, 1024))
    except ValueError as exc:
        raise ImageError("%s holds %s" % (part.where(), exc)) from None
    if fs_size > part.size:
        raise ImageError(
            "%s: its %s file system is larger (%s) than the partition" % (part.where(), part.filesystem, human(fs_size))
        )
    device = "%s?offset=%d" % (raw, part.start)
    rc, output = runner(["e2fsck", "-f", "-n", device], timeout)
    part.checks.append("e2fsck -fn: exit %d" % rc)
    if rc != 0:
        raise ImageError("%s: e2fsck -fn found errors (exit %d): %s" % (part.where(), rc, tail(output)))
    for name in files:
        rc, output = runner(["debugfs", "-R", "stat %s" % name, device], timeout)
        if rc != 0 or "Type: regular" not in output:
            raise ImageError(
                "%s has no file %s (debugfs: %s)" % (part.where(), name, tail(output, 3) or "exit %d" % rc)
            )
        part.checks.append("%s: present" % name)


def check_image(path: str, files: Sequence[str], timeout: int, tmp_dir: Optional[str] = None) -> List[Partition]:
    """Check the SD image at `path` (.img.zst or .img); its partitions, or ImageError.
    Temporary files live in a directory of `tmp_dir` (default: next to the image, where
    there is room for it) that is removed whatever happens."""
    tmp = tempfile.mkdtemp(prefix=".nixforge-sd-check-", dir=tmp_dir or os.path.dirname(os.path.abspath(path)))
    try:
        raw = raw_image(path, tmp, timeout)
        parts = read_mbr(read_at(raw, 0, SECTOR), os.path.getsize(raw))
        fat = [p for p in parts if p.type_id in FAT_TYPES]
        linux = [p for p in parts if p.type_id == LINUX_TYPE]
        if not fat or len(linux) != 1:
            raise ImageError(
                "expected a FAT firmware partition and one Linux (0x83) root partition, as nixpkgs' sd-image.nix"
                " lays them out; found %s" % ("; ".join(p.where() for p in parts) or "no partition")
            )
        for part in fat:
            check_fat(raw, part, tmp, timeout)
        check_ext(raw, linux[0], files, timeout)
        return parts
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
