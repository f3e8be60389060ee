"""The SD image check (plugin_utils/_sd_image.py): the MBR, FAT and ext parsers on bytes,
and check_image on small images made with the real tools (nfsandbox.sdcard)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import sys
from pathlib import Path

import pytest
from ansible_collections.nixforge.images.plugins.plugin_utils._sd_image import (
    ImageError,
    check_image,
    ext_info,
    fat_info,
    read_mbr,
    tail,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "sandbox"))

from nfsandbox.sdcard import MIB, alter, corrupt_root_superblock, make_sd_image, root_offset

EXTLINUX = ["/boot/extlinux/extlinux.conf"]
needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("mkfs.vfat", "fsck.vfat", "mke2fs", "e2fsck", "debugfs", "zstd")),
    reason="needs dosfstools, e2fsprogs and zstd (make deps installs them)",
)


def mbr(*entries: tuple[int, int, int, int]) -> bytes:
    sector = bytearray(512)
    for i, (status, ptype, start, count) in enumerate(entries):
        struct.pack_into("<B3sB3sII", sector, 446 + 16 * i, status, b"\0\0\0", ptype, b"\0\0\0", start, count)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def test_mbr_partitions_in_bytes() -> None:
    parts = read_mbr(mbr((0, 0x0B, 16384, 61440), (0x80, 0x83, 77824, 81920)), 77824 * 512 + 81920 * 512)
    assert [(p.number, p.type_id, p.start, p.size, p.bootable, p.type_name) for p in parts] == [
        (1, 0x0B, 8 * MIB, 30 * MIB, False, "W95 FAT32"),
        (2, 0x83, 38 * MIB, 40 * MIB, True, "Linux"),
    ]


@pytest.mark.parametrize(
    ("sector", "size", "message"),
    [
        (b"\0" * 512, 10 * MIB, "no MBR"),
        (mbr((0, 0xEE, 1, 100)), 10 * MIB, "GPT"),
        (
            mbr((0, 0x83, 2048, 40960)),
            10 * MIB,
            re.escape("partition 1 (20.0 MiB at 1.0 MiB) lies outside the image of 10.0 MiB"),
        ),
        (mbr((0, 0x0B, 2048, 4096), (0, 0x83, 4000, 100)), 10 * MIB, "partitions 1 and 2 overlap"),
        (mbr((0, 0x83, 0, 100)), 10 * MIB, "lies outside"),
    ],
    ids=["signature", "gpt", "outside", "overlap", "over-the-mbr"],
)
def test_bad_mbrs_are_refused(sector: bytes, size: int, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        read_mbr(sector, size)


def fat_boot(fat16_size: int, total: int, label: bytes) -> bytes:
    boot = bytearray(512)
    struct.pack_into("<HBHBHH", boot, 11, 512, 4, 4, 2, 512 if fat16_size else 0, 0)
    struct.pack_into("<H", boot, 22, fat16_size)
    struct.pack_into("<II", boot, 32, total, 0 if fat16_size else 1000)
    boot[43 if fat16_size else 71 : (43 if fat16_size else 71) + 11] = label
    boot[510:512] = b"\x55\xaa"
    return bytes(boot)


def test_fat_variant_and_label() -> None:
    assert fat_info(fat_boot(60, 61440, b"FIRMWARE   ")) == ("FAT16", "FIRMWARE")
    assert fat_info(fat_boot(0, 4 * 1024 * 1024, b"NO NAME    ")) == ("FAT32", "")
    assert fat_info(fat_boot(2, 2000, b"SMALL      "))[0] == "FAT12"
    with pytest.raises(ValueError, match="no FAT boot sector"):
        fat_info(b"plain text in the partition".ljust(512, b"\0"))


def ext_superblock(blocks: int, log_block: int, incompat: int, compat: int, label: bytes) -> bytes:
    sb = bytearray(1024)
    struct.pack_into("<I", sb, 0x04, blocks & 0xFFFFFFFF)
    struct.pack_into("<I", sb, 0x18, log_block)
    struct.pack_into("<H", sb, 0x38, 0xEF53)
    struct.pack_into("<II", sb, 0x5C, compat, incompat)
    struct.pack_into("<I", sb, 0x150, blocks >> 32)
    sb[0x78 : 0x78 + len(label)] = label
    return bytes(sb)


def test_ext_kind_label_and_size() -> None:
    assert ext_info(ext_superblock(40960, 0, 0x2C2, 0x3C, b"NIXOS_SD")) == ("ext4", "NIXOS_SD", 40 * MIB)
    assert ext_info(ext_superblock(1000, 2, 0, 0x4, b"")) == ("ext3", "", 4096000)
    assert ext_info(ext_superblock(1000, 0, 0, 0, b"x"))[0] == "ext2"
    # 64bit: the high half of the block count counts
    assert ext_info(ext_superblock((1 << 32) + 1, 2, 0x80, 0, b""))[2] == ((1 << 32) + 1) * 4096
    with pytest.raises(ValueError, match="no superblock magic ef53"):
        ext_info(b"nixforge sandbox image (sd)\n".ljust(1024, b"\0"))


def test_tail_keeps_the_first_and_last_lines() -> None:
    text = "\n".join("line %d" % i for i in range(30))
    assert tail(text) == " | ".join(
        ["line %d" % i for i in range(10)] + ["..."] + ["line %d" % i for i in range(26, 30)]
    )
    assert tail("a\n\n b \n") == "a | b"


@needs_tools
@pytest.mark.parametrize("compress", [True, False], ids=["zst", "raw"])
def test_a_sound_image_passes_and_names_its_partitions(tmp_path: Path, compress: bool) -> None:
    image = make_sd_image(tmp_path / "out", compress=compress)
    parts = check_image(str(image), EXTLINUX, 120)
    assert [p.describe() for p in parts] == [
        "1: FAT16 FIRMWARE, 30.0 MiB at 8.0 MiB (type 0x0b W95 FAT32)",
        "2: ext4 NIXOS_SD, 40.0 MiB at 38.0 MiB (type 0x83 Linux, bootable)",
    ]
    assert parts[1].checks == ["e2fsck -fn: exit 0", "/boot/extlinux/extlinux.conf: present"]
    assert parts[0].as_dict()["type"] == "0x0b"
    assert os.listdir(tmp_path / "out") == [image.name]  # the temporary files are gone


@needs_tools
def test_an_altered_ext4_superblock_fails_naming_the_partition_and_e2fsck(tmp_path: Path) -> None:
    image = make_sd_image(tmp_path / "out")
    corrupt_root_superblock(image)
    with pytest.raises(ImageError) as err:
        check_image(str(image), EXTLINUX, 120)
    message = str(err.value)
    assert message.startswith("partition 2 (type 0x83 Linux, ext4 NIXOS_SD, 40.0 MiB at 38.0 MiB): e2fsck -fn"), message
    assert "checksum" in message
    assert os.listdir(tmp_path / "out") == [image.name]


@needs_tools
def test_a_damaged_fat_fails_naming_the_partition(tmp_path: Path) -> None:
    image = make_sd_image(tmp_path / "out")
    # the second FAT copy disagrees with the first: fsck.vfat -n reports it
    alter(image, 8 * MIB + 512 * 4 + 512 * 60 + 4, b"\x13\x37")
    with pytest.raises(
        ImageError, match=r"^partition 1 \(type 0x0b W95 FAT32, FAT16 FIRMWARE.*fsck.vfat -n found errors"
    ):
        check_image(str(image), EXTLINUX, 120)


@needs_tools
def test_a_root_without_extlinux_conf_fails(tmp_path: Path) -> None:
    image = make_sd_image(tmp_path / "out", root_files={"etc/hostname": "nixos\n"})
    with pytest.raises(
        ImageError, match=r"^partition 2 .* has no file /boot/extlinux/extlinux.conf \(debugfs: .*not found"
    ):
        check_image(str(image), EXTLINUX, 120)


@needs_tools
def test_text_instead_of_file_systems_fails(tmp_path: Path) -> None:
    image = make_sd_image(tmp_path / "out")
    alter(image, root_offset(), b"nixforge sandbox image (sd)\n".ljust(4096, b"\0"))
    with pytest.raises(ImageError, match=r"^partition 2 \(type 0x83 Linux, 40.0 MiB at 38.0 MiB\) holds no ext2/3/4"):
        check_image(str(image), EXTLINUX, 120)


@needs_tools
def test_a_truncated_zstd_fails(tmp_path: Path) -> None:
    image = make_sd_image(tmp_path / "out")
    image.write_bytes(image.read_bytes()[:-100])
    with pytest.raises(ImageError, match="zstd could not decompress it"):
        check_image(str(image), EXTLINUX, 120)
    assert os.listdir(tmp_path / "out") == [image.name]
