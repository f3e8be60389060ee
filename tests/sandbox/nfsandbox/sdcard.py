"""SD-card images made on the controller with the real tools (mkfs.vfat, mke2fs -d, zstd),
laid out as nixpkgs' sd-image.nix lays them out, for the tests of the SD image check:
a sound one, and the ways one goes wrong (an altered ext4 superblock, a missing file).
No root: the file systems are made in files and placed into the disk image by offset.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

MIB = 1024 * 1024
SECTOR = 512
# nixpkgs: the firmware partition starts at 8 MiB and is 30 MiB; the disk id is "Nixx".
FIRMWARE_OFFSET = 8 * MIB
DISK_ID = 0x2178694E


def _mbr(partitions: list[tuple[int, int, int, bool]]) -> bytes:
    sector = bytearray(SECTOR)
    struct.pack_into("<I", sector, 440, DISK_ID)
    for index, (start, size, ptype, bootable) in enumerate(partitions):
        entry = struct.pack(
            "<B3sB3sII",
            0x80 if bootable else 0,
            b"\xfe\xff\xff",
            ptype,
            b"\xfe\xff\xff",
            start // SECTOR,
            size // SECTOR,
        )
        sector[446 + 16 * index : 446 + 16 * (index + 1)] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def make_sd_image(
    directory: Path,
    name: str = "nixos-sd-image-test.img",
    root_files: dict[str, str] | None = None,
    firmware_mib: int = 30,
    root_mib: int = 40,
    compress: bool = True,
) -> Path:
    """An MBR image: FAT firmware partition FIRMWARE (type 0x0b), ext4 root NIXOS_SD
    (type 0x83, bootable) holding root_files (default /boot/extlinux/extlinux.conf).
    Returns the .img.zst (or the .img when compress is false)."""
    directory.mkdir(parents=True, exist_ok=True)
    work = directory / (name + ".parts")
    tree = work / "root"
    files = {"boot/extlinux/extlinux.conf": "DEFAULT nixos-default\nLABEL nixos-default\n  LINUX ../Image\n"}
    files = root_files if root_files is not None else files
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    tree.mkdir(parents=True, exist_ok=True)
    firmware, root = work / "firmware.img", work / "root.img"
    firmware.write_bytes(b"")
    firmware.touch()
    subprocess.run(["truncate", "-s", f"{firmware_mib}M", str(firmware), str(root)], check=True)
    root.touch()
    subprocess.run(["truncate", "-s", f"{root_mib}M", str(root)], check=True)
    subprocess.run(
        ["mkfs.vfat", "--invariant", "-i", "%08x" % DISK_ID, "-n", "FIRMWARE", str(firmware)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "NIXOS_SD", "-d", str(tree), "-E", "root_owner=0:0", str(root)],
        check=True,
        capture_output=True,
    )
    root_offset = FIRMWARE_OFFSET + firmware_mib * MIB
    raw = directory / name
    with raw.open("wb") as out:
        out.write(_mbr([(FIRMWARE_OFFSET, firmware_mib * MIB, 0x0B, False), (root_offset, root_mib * MIB, 0x83, True)]))
        out.seek(FIRMWARE_OFFSET)
        out.write(firmware.read_bytes())
        out.seek(root_offset)
        out.write(root.read_bytes())
    subprocess.run(["rm", "-rf", str(work)], check=True)
    if not compress:
        return raw
    subprocess.run(["zstd", "-q", "-f", "--rm", str(raw), "-o", f"{raw}.zst"], check=True)
    return Path(f"{raw}.zst")


def alter(image: Path, offset: int, data: bytes) -> None:
    """Write `data` at `offset` of the uncompressed image (decompressing and compressing a
    .zst around it), as bytes damaged on the builder or on the way would be."""
    raw = image.with_suffix("") if image.suffix == ".zst" else image
    if raw != image:
        subprocess.run(["zstd", "-q", "-d", "-f", str(image), "-o", str(raw)], check=True)
    with raw.open("r+b") as fh:
        fh.seek(offset)
        fh.write(data)
    if raw != image:
        subprocess.run(["zstd", "-q", "-f", "--rm", str(raw), "-o", str(image)], check=True)


def root_offset(firmware_mib: int = 30) -> int:
    """Where make_sd_image's root partition starts."""
    return FIRMWARE_OFFSET + firmware_mib * MIB


def corrupt_root_superblock(image: Path, firmware_mib: int = 30) -> None:
    """Alter the ext4 superblock's inode count (its checksum no longer matches): the magic
    and the size stay, so only e2fsck can tell."""
    alter(image, root_offset(firmware_mib) + 1024, b"\x07\x00\x00\x00")
