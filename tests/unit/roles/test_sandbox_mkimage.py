"""The pure parts of the sandbox image definition (roles/nixos_image/files/images/sandbox/mkimage.py).

Byte formats written in Python (MBR, GRUB's boot sector and embedded core.img blocklist,
the initramfs cpio archive, qcow2, padding) and the module switches, checked against
the formats' own rules. Building whole images (with mke2fs, mkfs.vfat, GRUB, Debian's
packages) and booting them is tests/integration/test_sandbox_image.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
import zlib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]
MKIMAGE = ROOT / "roles" / "nixos_image" / "files" / "images" / "sandbox" / "mkimage.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sandbox_mkimage", MKIMAGE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mk = _load()


def test_mbr_entries_and_signature() -> None:
    sector = mk.mbr(0x2178694E, [(16384, 81920, 0x0C, False), (98304, 77824, 0x83, True)], b"\xeb\x63" + b"\x90" * 500)
    assert len(sector) == 512 and sector[510:] == b"\x55\xaa"
    assert struct.unpack_from("<I", sector, 440)[0] == 0x2178694E
    assert sector[:2] == b"\xeb\x63" and sector[438:440] == b"\x90\x90"  # boot code stops at 440
    first = struct.unpack_from("<B3sB3sII", sector, 446)
    second = struct.unpack_from("<B3sB3sII", sector, 462)
    assert (first[0], first[2], first[4], first[5]) == (0, 0x0C, 16384, 81920)
    assert (second[0], second[2], second[4], second[5]) == (0x80, 0x83, 98304, 77824)
    assert sector[478:510] == bytes(32)  # entries 3 and 4 empty


def test_grub_boot_sector_patches_like_grub_bios_setup() -> None:
    boot_img = bytes(range(256)) * 2
    disk = mk.mbr(0x6E786667, [(2048, 4096, 0x83, True)])
    sector = mk.grub_boot_sector(boot_img, disk, 1)
    assert struct.unpack_from("<Q", sector, 0x5C)[0] == 1  # core.img's first sector
    assert sector[0x64] == 0xFF  # boot drive from the BIOS
    assert sector[0x66:0x68] == b"\x90\x90"  # no floppy probe
    assert sector[0x1B8:] == disk[0x1B8:]  # disk id, partition table, 0x55AA kept
    assert sector[0x03:0x5A] == disk[0x03:0x5A]  # the disk's BPB area kept
    assert sector[:3] == boot_img[:3] and sector[0x68:0x1B8] == boot_img[0x68:0x1B8]  # code untouched
    with pytest.raises(ValueError):
        mk.grub_boot_sector(boot_img[:100], disk, 1)


def test_grub_core_blocklist_names_the_rest_of_core() -> None:
    core = bytes([0xAB]) * (512 * 40 + 100)  # 41 sectors once padded
    embedded = mk.grub_core_embedded(core, 1)
    assert len(embedded) == 41 * 512 and embedded[-412:] == bytes(412)
    start, length, segment = struct.unpack_from("<QHH", embedded, 500)
    assert (start, length, segment) == (2, 40, 0x820)  # sectors 2..41 load at 0x8200
    assert embedded[488:500] == bytes(12)  # terminator entry
    assert embedded[512 : 512 * 40] == core[512 : 512 * 40]


def _cpio_entries(data: bytes) -> list[tuple[str, int, int, bytes]]:
    """(name, mode, rdevmajor, data) of each newc entry: a reader following the format."""
    entries, offset = [], 0
    while True:
        assert data[offset : offset + 6] == b"070701"
        fields = [int(data[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name_start = offset + 110
        name = data[name_start : name_start + namesize - 1].decode()
        body = name_start + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return entries
        entries.append((name, fields[1], fields[9], data[body : body + filesize]))
        offset = body + filesize + (-filesize % 4)


def test_cpio_newc_round_trip() -> None:
    archive = mk.cpio_newc(
        [
            ("bin", 0o40755, b""),
            ("bin/busybox", 0o100755, b"\x7fELF" + b"x" * 5),
            ("bin/sh", 0o120777, b"busybox"),
            ("dev/console", 0o20600, b"5:1"),
        ]
    )
    assert len(archive) % 4 == 0
    parsed = _cpio_entries(archive)
    assert [(n, m) for n, m, _data, _size in parsed] == [
        ("bin", 0o40755),
        ("bin/busybox", 0o100755),
        ("bin/sh", 0o120777),
        ("dev/console", 0o20600),
    ]
    assert parsed[1][3] == b"\x7fELF" + b"x" * 5 and parsed[2][3] == b"busybox"
    assert parsed[3][2] == 5 and parsed[3][3] == b""  # a device: major 5, no data


def test_padding_is_deterministic_and_incompressible() -> None:
    one = mk.padding(b"seed", 1 << 20)
    assert one == mk.padding(b"seed", 1 << 20) and len(one) == 1 << 20
    assert one != mk.padding(b"other", 1 << 20)
    assert len(zlib.compress(one, 9)) > len(one) * 0.99


def test_qcow2_header_and_sparse_clusters() -> None:
    raw = bytearray(4 << 20)
    raw[0:512] = b"\x01" * 512
    raw[3 << 20 : (3 << 20) + 10] = b"z" * 10
    image = mk.qcow2(bytes(raw))
    magic, version = struct.unpack_from(">4sI", image, 0)
    cluster_bits, size = struct.unpack_from(">IQ", image, 20)
    assert (magic, version, cluster_bits, size) == (b"QFI\xfb", 2, 16, 4 << 20)
    # header, refcount table + block, L1, one L2, two data clusters
    assert len(image) == 7 * 65536
    l2 = image[4 * 65536 : 5 * 65536]
    mapped = {i: struct.unpack_from(">Q", l2, i * 8)[0] & ((1 << 62) - 1) for i in range(64)}
    assert mapped[0] == 5 * 65536 and mapped[48] == 6 * 65536
    assert [i for i, v in mapped.items() if v] == [0, 48]
    assert image[6 * 65536 : 6 * 65536 + 10] == b"z" * 10


def test_module_switches_and_lines(tmp_path: Path) -> None:
    module = tmp_path / "nixforge-module"
    module.mkdir()
    (module / "default.nix").write_text(
        "# nixforge-sandbox-build-seconds: 2.5\n# nixforge-sandbox-break-init: true\n{ ... }: { }\n"
    )
    (module / "extra.nix").write_text("{ }\n")
    assert mk.build_seconds(str(module)) == 2.5
    assert mk.break_init(str(module)) is True
    (module / "default.nix").write_text("# nixforge-sandbox-break-init: false\n{ ... }: { }\n")
    assert mk.break_init(str(module)) is False and mk.build_seconds(str(module)) == 0
    assert mk.break_init("") is False and mk.module_lines("") == "module: none\n"
    digest = hashlib.sha256(b"{ }\n").hexdigest()
    lines = mk.module_lines(str(module)).splitlines()
    assert lines[0].startswith("module: default.nix sha256:") and lines[1] == "module: extra.nix sha256:" + digest


def test_layout_and_sizes() -> None:
    assert mk.partition_layout(8, [40, 64]) == [(16384, 81920), (98304, 131072)]
    assert mk.fs_size_mib(0) == 24 and mk.fs_size_mib(0, 64) == 64
    assert mk.fs_size_mib(40 << 20) == 50 + 24


def test_extlinux_conf_names_its_files() -> None:
    conf = mk.extlinux_conf("NixOS", "../nixos/Image", "../nixos/initrd", "../nixos/dtbs", "init=/sbin/init")
    assert "DEFAULT nixos-default\n" in conf and "LABEL nixos-default\n" in conf
    assert "  LINUX ../nixos/Image\n" in conf and "  APPEND init=/sbin/init\n" in conf


def test_populate_commands_are_sorted_owned_by_root_and_timeless(tmp_path: Path) -> None:
    """The ext4 images are filled in sorted order whatever the source directory's readdir
    order (which differs between file systems), with modes kept, owner root, fixed times."""
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "bin" / "busybox").write_bytes(b"x")
    (tmp_path / "usr" / "bin" / "busybox").chmod(0o755)
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "root").mkdir(mode=0o700)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "shadow").write_text("root:*:::::::\n")
    (tmp_path / "etc" / "shadow").chmod(0o600)
    commands = mk.populate_commands(str(tmp_path))
    created = [c for c in commands if not c.startswith("sif")]
    assert created == [
        'symlink "/bin" "usr/bin"',  # a directory's entries in sorted order, then each subdirectory's
        'mkdir "/etc"',
        'mkdir "/root"',
        'mkdir "/usr"',
        'write "%s" "/etc/shadow"' % (tmp_path / "etc" / "shadow"),
        'mkdir "/usr/bin"',
        'write "%s" "/usr/bin/busybox"' % (tmp_path / "usr" / "bin" / "busybox"),
    ]
    assert 'sif "/root" mode 040700' in commands and 'sif "/etc/shadow" mode 0100600' in commands
    assert 'sif "/usr/bin/busybox" mode 0100755' in commands
    for path in ("/", "/bin", "/etc/shadow", "/usr/bin/busybox"):
        assert 'sif "%s" uid 0' % path in commands and 'sif "%s" gid 0' % path in commands
        assert 'sif "%s" ctime @%d' % (path, mk.EPOCH) in commands and 'sif "%s" mtime_extra 0' % path in commands
    (tmp_path / "etc" / 'we"ird').write_text("")
    with pytest.raises(SystemExit, match="quote or newline"):
        mk.populate_commands(str(tmp_path))
