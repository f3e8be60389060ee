# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: what DigitalOcean would refuse in an image file or URL, found on the controller.

    facts = inspect_image("/path/nixos.qcow2.gz")   # ImageRefused(reason, hint) if DO would refuse it
    check_import_url(url)                            # ImageRefused for a URL DO cannot import

DigitalOcean imports raw (MBR or GPT), qcow2, VHDX, VDI and VMDK images, uncompressed or
inside gzip or bzip2 (nothing else), up to 100 GB uncompressed; it reads the file name from
the URL's path, so a URL with a query string (a pre-signed URL) is refused. Finding this
before the upload saves a B2 upload and an import that would only fail afterwards.

The format and size come from the image's own bytes: the first MiBs of the (decompressed)
stream hold every header read here; a raw image inside gzip/bzip2 has no header with its
size, so its stream is decompressed to the end (stopping once it passes the limit).
"""

from __future__ import annotations

import bz2
import gzip
import struct
import uuid
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Dict, Optional, Tuple
from urllib.parse import urlsplit

__all__ = ["MAX_UNCOMPRESSED", "ImageFacts", "ImageRefused", "check_import_url", "inspect_image", "sniff_format"]

GIB = 1024**3
MAX_UNCOMPRESSED = 100 * GIB  # DigitalOcean: "100 GB or less" once decompressed
HEAD_BYTES = 4 * 1024 * 1024  # enough for every header read below (VHDX metadata sits at 1 MiB)
CHUNK = 1024 * 1024
SECTOR = 512
FORMATS_TEXT = "raw (MBR or GPT), qcow2, VHDX, VDI or VMDK"

# magic bytes of compressions DigitalOcean does not take -> (name, how to convert)
OTHER_COMPRESSIONS: Tuple[Tuple[bytes, int, str, str], ...] = (
    (b"\x28\xb5\x2f\xfd", 0, "zstd", "zstd -dc IMAGE | gzip > IMAGE.gz"),
    (b"\xfd7zXZ\x00", 0, "xz", "xz -dc IMAGE | gzip > IMAGE.gz"),
    (b"PK\x03\x04", 0, "a zip archive", "unzip the image, then gzip it"),
    (b"ustar", 257, "a tar archive", "extract the disk image from the archive, then gzip it"),
    (b"7z\xbc\xaf\x27\x1c", 0, "a 7-Zip archive", "extract the disk image, then gzip it"),
)
VHDX_METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
VHDX_VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
VHDX_REGION_TABLE = 192 * 1024


class ImageRefused(Exception):
    """DigitalOcean would refuse this image or URL; ``hint`` says how to fix it."""

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


@dataclass
class ImageFacts:
    format: str  # raw, qcow2, vhdx, vdi, vmdk
    compression: Optional[str]  # gzip, bzip2 or None
    virtual_size: int  # bytes of the disk the image describes
    uncompressed_size: Optional[int]  # bytes of the decompressed stream, when it was read to the end
    file_size: int

    def as_dict(self) -> Dict[str, object]:
        return dict(self.__dict__)


def check_import_url(url: str) -> None:
    """A URL DigitalOcean can import from: http(s), a host, no query string."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImageRefused("the image URL is not an http(s) URL", "Give an http or https URL")
    if parts.query:
        raise ImageRefused(
            "the image URL has a query string (a pre-signed or authorized URL); DigitalOcean reads the file name "
            "from the URL's path and refuses such URLs",
            "Serve the image from a public URL without a query string: with the do_image_publish role, use "
            "do_image_publish_url_mode=public and an allPublic bucket (the object gets an unguessable name and "
            "is deleted right after the import)",
        )


def _compression(magic: bytes) -> Optional[str]:
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    # "BZh", the block size digit, then a block or end-of-stream magic
    if magic[:3] == b"BZh" and magic[3:4] in b"123456789" and magic[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bzip2"
    for signature, offset, name, fix in OTHER_COMPRESSIONS:
        if magic[offset : offset + len(signature)] == signature:
            raise ImageRefused(
                "the image is %s; DigitalOcean takes images uncompressed or compressed with gzip or bzip2 only" % name,
                "Recompress it, for example: %s" % fix,
            )
    return None


def _read_stream(handle: BinaryIO, limit: int, to_end: bool) -> Tuple[bytes, Optional[int]]:
    """(first HEAD_BYTES, total length or None) of a decompressing stream; reading stops
    past ``limit`` (the total then is the bytes read, over the limit)."""
    head = handle.read(HEAD_BYTES)
    if not to_end:
        return head, None
    total = len(head)
    while total <= limit:
        chunk = handle.read(CHUNK)
        if not chunk:
            break
        total += len(chunk)
    return head, total


def _decompressed(path: str, compression: str, limit: int, to_end: bool) -> Tuple[bytes, Optional[int]]:
    opener: Callable[..., BinaryIO] = gzip.open if compression == "gzip" else bz2.open  # type: ignore[assignment]
    try:
        with opener(path, "rb") as handle:
            return _read_stream(handle, limit, to_end)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise ImageRefused(
            "the %s stream cannot be decompressed (%s); DigitalOcean would refuse it" % (compression, exc),
            "Check the file (a truncated download?), or recompress the image with gzip or bzip2",
        ) from None


def _vhdx_size(head: bytes) -> Optional[int]:
    """The virtual disk size item of the VHDX metadata region, when it lies within ``head``."""
    rt = VHDX_REGION_TABLE
    if head[rt : rt + 4] != b"regi":
        return None
    for i in range(min(struct.unpack_from("<I", head, rt + 8)[0], 2047)):
        entry = rt + 16 + 32 * i
        if entry + 32 > len(head):
            return None
        if head[entry : entry + 16] != VHDX_METADATA_REGION:
            continue
        base = struct.unpack_from("<Q", head, entry + 16)[0]
        if base + 32 > len(head) or head[base : base + 8] != b"metadata":
            return None
        for j in range(struct.unpack_from("<H", head, base + 10)[0]):
            item = base + 32 + 32 * j
            if item + 32 > len(head):
                return None
            if head[item : item + 16] == VHDX_VIRTUAL_DISK_SIZE:
                where = base + struct.unpack_from("<I", head, item + 16)[0]
                return struct.unpack_from("<Q", head, where)[0] if where + 8 <= len(head) else None
    return None


def _vmdk_descriptor_size(head: bytes) -> Optional[int]:
    sectors = 0
    for line in head[:65536].decode("ascii", errors="replace").splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] in ("RW", "RDONLY", "NOACCESS") and words[1].isdigit():
            sectors += int(words[1])
    return sectors * SECTOR or None


def sniff_format(head: bytes) -> Tuple[str, Optional[int]]:
    """(format, virtual size from its header or None for raw) of an uncompressed image."""
    if head[:4] == b"QFI\xfb" and len(head) >= 32:
        if struct.unpack_from(">I", head, 4)[0] in (2, 3):
            return "qcow2", struct.unpack_from(">Q", head, 24)[0]
    elif head[:8] == b"vhdxfile":
        return "vhdx", _vhdx_size(head)
    elif len(head) >= 0x178 and struct.unpack_from("<I", head, 0x40)[0] == 0xBEDA107F:
        return "vdi", struct.unpack_from("<Q", head, 0x170)[0]
    elif head[:4] == b"KDMV" and len(head) >= 20:
        return "vmdk", struct.unpack_from("<Q", head, 12)[0] * SECTOR
    elif head.lstrip()[:21] == b"# Disk DescriptorFile":
        return "vmdk", _vmdk_descriptor_size(head)
    elif head[512:520] == b"EFI PART" or (len(head) >= SECTOR and head[510:512] == b"\x55\xaa"):
        return "raw", None
    elif head[257:262] == b"ustar":  # a .tar.gz: DigitalOcean wants the disk image itself
        _compression(head)
    raise ImageRefused(
        "the image is not in a format DigitalOcean imports (it takes %s, optionally gzip or bzip2)" % FORMATS_TEXT,
        "Build the image in one of these formats (nixpkgs' DigitalOcean image is a qcow2.gz), or convert it "
        "with qemu-img convert -O qcow2",
    )


def _too_large(size: int, limit: int, what: str) -> ImageRefused:
    return ImageRefused(
        "the image's %s is %.1f GiB, over DigitalOcean's limit of %.0f GiB uncompressed"
        % (what, size / GIB, limit / GIB),
        "Make the disk smaller (for a NixOS image: a smaller disk size in the image definition)",
    )


def inspect_image(path: str, limit: int = MAX_UNCOMPRESSED) -> ImageFacts:
    """Format, compression and sizes of the image at ``path``; ImageRefused when DigitalOcean
    would refuse it (format, compression, size), with the reason and the fix."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(HEAD_BYTES)
            file_size = handle.seek(0, 2)
    except OSError as exc:
        raise ImageRefused("cannot read the image file (%s)" % exc.strerror, "Check the path") from None
    if not magic:
        raise ImageRefused("the image file is empty", "Check that the build wrote the image")
    compression = _compression(magic)
    head, total = magic, None
    if compression is not None:
        head, _ignored = _decompressed(path, compression, limit, to_end=False)
    fmt, virtual = sniff_format(head)
    if compression is not None and virtual is None:  # raw: its size is the whole stream
        head, total = _decompressed(path, compression, limit, to_end=True)
    elif compression is None:
        total = file_size
    size = virtual if virtual is not None else int(total or 0)
    if size > limit:
        raise _too_large(size, limit, "virtual disk size" if virtual is not None else "uncompressed size")
    if total is not None and total > limit:
        raise _too_large(total, limit, "uncompressed size")
    return ImageFacts(fmt, compression, size, total, file_size)
