"""What DigitalOcean does with the URL of a custom image: fetch it, look inside, size it.

`fetch(url, dest, size_limit)` sends HEAD (a server that does not answer it fails the
import, 405 and 501 included, as DigitalOcean documents) and then GET, streams the body to `dest` on
disk (never whole in memory) and hashes it on the way. `inspect(path, size_limit)`
reads the file back: optionally gzip or bzip2 (decompressed as a stream, only the first
`HEAD_BYTES` of the inner image kept), then one of the formats DigitalOcean accepts:
raw with an MBR or GPT boot signature, qcow2, VHDX, VDI or VMDK. Anything else, and any
fetch problem, raises `ImportRefused` with the `error_message` the image will carry.

Only loopback and the sandbox's own networks are fetched from (IP literals or
`localhost`, no DNS look-ups): traffic never leaves the machine.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import ipaddress
import struct
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable
from urllib.parse import urlsplit

CHUNK = 1024 * 1024
HEAD_BYTES = 8 * 1024 * 1024  # of the inner image kept in memory for the format headers
SECTOR = 512
TIMEOUT = 30.0

FORMATS_TEXT = (
    "raw (with an MBR or GPT partition table), qcow2, VHDX, VDI or VMDK, optionally compressed with gzip or bzip2"
)
MSG_UNSUPPORTED = (
    "We don't support the format of the image you provided. "
    f"Please provide an image in one of the supported formats: {FORMATS_TEXT}."
)
MSG_DECOMPRESS = (
    "We had a problem decompressing your file. This typically happens if the archive is corrupt or "
    "contains multiple files. Please try decompressing the file locally and uploading the uncompressed "
    "image, or recompressing using gzip or bzip2."
)


class ImportRefused(Exception):
    """The import fails; the message is what the image's `error_message` says."""


@dataclass
class Fetched:
    path: Path
    size: int  # bytes downloaded
    sha256: str  # of the bytes as fetched (before any decompression)
    content_type: str


@dataclass
class Inspection:
    format: str  # raw, qcow2, vhdx, vdi, vmdk
    compression: str | None  # gzip, bzip2 or None
    virtual_size: int  # bytes of the disk the image describes


def _size_text(size: int) -> str:
    return f"{size / 1024**3:.0f} GB" if size >= 1024**3 else f"{size} bytes"


def msg_too_large(limit: int) -> str:
    return (
        f"Your image is larger than the maximum size of {_size_text(limit)} after decompression. "
        "Please reduce the size of the image and try again."
    )


def msg_unreachable(url: str, why: str) -> str:
    return (
        f"We were unable to download your image from {url} ({why}). "
        "Please make sure the URL is correct and publicly accessible, then try again."
    )


def check_url(url: str, networks: Iterable[str], refuse_query: bool = False) -> None:
    """Refuse URLs DigitalOcean could not fetch from here, before any connection."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImportRefused(msg_unreachable(url, "only http and https URLs can be imported"))
    if refuse_query and parts.query:
        raise ImportRefused(
            msg_unreachable(
                url, "URLs with a query string are not accepted: the file name is read from the URL's path"
            )
        )
    host = parts.hostname
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ImportRefused(msg_unreachable(url, f"could not resolve host {host}")) from None
    if address.is_loopback or any(address in ipaddress.ip_network(n) for n in networks):
        return
    raise ImportRefused(msg_unreachable(url, f"connection to {host} failed: network unreachable"))


def _opener(networks: Iterable[str], refuse_query: bool) -> urllib.request.OpenerDirector:
    class Redirects(urllib.request.HTTPRedirectHandler):
        # a redirect is followed only to where check_url would have let the first request go
        def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
            check_url(newurl, networks, refuse_query)
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    # no proxy from the environment: the URL is fetched from the daemon's own position
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), Redirects)


def _open(opener: urllib.request.OpenerDirector, method: str, url: str) -> IO[bytes]:
    request = urllib.request.Request(url, method=method)  # noqa: S310 - scheme checked in check_url
    request.add_header("User-Agent", "nfsandbox-digitalocean-importer/1")
    return opener.open(request, timeout=TIMEOUT)


def fetch(url: str, dest: Path, size_limit: int, networks: Iterable[str] = (), refuse_query: bool = False) -> Fetched:
    """HEAD then GET `url` (checked first); the body is streamed to `dest` and hashed."""
    networks = list(networks)
    check_url(url, networks, refuse_query)
    opener = _opener(networks, refuse_query)
    content_type = ""
    try:
        with _open(opener, "HEAD", url) as response:
            length = response.headers.get("Content-Length")
            content_type = response.headers.get("Content-Type") or ""
        if length and length.isdigit() and int(length) > size_limit:
            raise ImportRefused(msg_too_large(size_limit))
    except urllib.error.HTTPError as exc:
        # DigitalOcean checks the URL with HEAD first: a server that does not answer it
        # (405, 501, ...) fails the import before any GET, as documented
        why = f"the server answered {exc.code} {exc.reason} to the HEAD request DigitalOcean sends first"
        raise ImportRefused(msg_unreachable(url, why)) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ImportRefused(msg_unreachable(url, _reason(exc))) from None
    digest = hashlib.sha256()
    size = 0
    try:
        with _open(opener, "GET", url) as response, open(dest, "wb") as out:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > size_limit:
                    raise ImportRefused(msg_too_large(size_limit))
                digest.update(chunk)
                out.write(chunk)
            content_type = response.headers.get("Content-Type") or content_type
    except urllib.error.HTTPError as exc:
        raise ImportRefused(msg_unreachable(url, f"the server answered {exc.code} {exc.reason}")) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ImportRefused(msg_unreachable(url, _reason(exc))) from None
    if size == 0:
        raise ImportRefused(MSG_UNSUPPORTED)
    return Fetched(dest, size, digest.hexdigest(), content_type)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason) or type(exc).__name__


# -- inspection ------------------------------------------------------------------------


def compression_of(head: bytes) -> str | None:
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    # "BZh", a block size digit, then the block magic (pi) or the end-of-stream magic (sqrt pi)
    if head[:3] == b"BZh" and head[3:4] in b"123456789" and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bzip2"
    return None


def inspect(path: Path, size_limit: int) -> Inspection:
    with open(path, "rb") as handle:
        magic = handle.read(16)
    compression = compression_of(magic)
    if compression is None:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
        total = path.stat().st_size
    else:
        head, total = _decompressed_head(path, compression, size_limit)
    fmt, virtual = sniff(head, total)
    if total > size_limit or virtual > size_limit:
        raise ImportRefused(msg_too_large(size_limit))
    return Inspection(fmt, compression, virtual)


def _decompressed_head(path: Path, compression: str, size_limit: int) -> tuple[bytes, int]:
    opener = gzip.open if compression == "gzip" else bz2.open
    head = bytearray()
    total = 0
    try:
        with opener(path, "rb") as stream:
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > size_limit:
                    raise ImportRefused(msg_too_large(size_limit))
                if len(head) < HEAD_BYTES:
                    head += chunk[: HEAD_BYTES - len(head)]
    except (OSError, EOFError, zlib.error, ValueError):
        raise ImportRefused(MSG_DECOMPRESS) from None
    if total == 0:
        raise ImportRefused(MSG_DECOMPRESS)
    return bytes(head), total


def sniff(head: bytes, total: int) -> tuple[str, int]:
    """(format, virtual size in bytes) of an uncompressed image whose first bytes are `head`."""
    if head[:4] == b"QFI\xfb":
        (version,) = struct.unpack_from(">I", head, 4)
        if version not in (2, 3) or len(head) < 32:
            raise ImportRefused(MSG_UNSUPPORTED)
        return "qcow2", struct.unpack_from(">Q", head, 24)[0]
    if head[:8] == b"vhdxfile":
        return "vhdx", vhdx_virtual_size(head) or total
    if len(head) >= 0x178 and struct.unpack_from("<I", head, 0x40)[0] == 0xBEDA107F:
        return "vdi", struct.unpack_from("<Q", head, 0x170)[0]
    if head[:4] == b"KDMV":
        if len(head) < 20:
            raise ImportRefused(MSG_UNSUPPORTED)
        return "vmdk", struct.unpack_from("<Q", head, 12)[0] * SECTOR
    if head.lstrip()[:21] == b"# Disk DescriptorFile":
        return "vmdk", vmdk_descriptor_size(head) or total
    if len(head) >= 520 and head[512:520] == b"EFI PART":
        return "raw", total
    if len(head) >= SECTOR and head[510:512] == b"\x55\xaa":
        return "raw", total
    raise ImportRefused(MSG_UNSUPPORTED)


def _guid(text: str) -> bytes:
    import uuid

    return uuid.UUID(text).bytes_le


VHDX_METADATA_REGION = _guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
VHDX_VIRTUAL_DISK_SIZE = _guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
VHDX_REGION_TABLE = 192 * 1024


def vhdx_virtual_size(head: bytes) -> int | None:
    """Virtual disk size from the VHDX metadata, when it lies within `head`."""
    rt = VHDX_REGION_TABLE
    if len(head) < rt + 16 or head[rt : rt + 4] != b"regi":
        return None
    count = struct.unpack_from("<I", head, rt + 8)[0]
    for i in range(min(count, 2047)):
        entry = rt + 16 + 32 * i
        if entry + 32 > len(head):
            return None
        guid, offset = head[entry : entry + 16], struct.unpack_from("<Q", head, entry + 16)[0]
        if guid != VHDX_METADATA_REGION:
            continue
        if offset + 32 > len(head) or head[offset : offset + 8] != b"metadata":
            return None
        items = struct.unpack_from("<H", head, offset + 10)[0]
        for j in range(items):
            item = offset + 32 + 32 * j
            if item + 32 > len(head):
                return None
            if head[item : item + 16] == VHDX_VIRTUAL_DISK_SIZE:
                where = offset + struct.unpack_from("<I", head, item + 16)[0]
                if where + 8 > len(head):
                    return None
                return struct.unpack_from("<Q", head, where)[0]
    return None


def vmdk_descriptor_size(head: bytes) -> int | None:
    """Sum of the extents of a VMDK text descriptor (in sectors), in bytes."""
    sectors = 0
    text = head[:65536].decode("ascii", errors="replace")
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] in ("RW", "RDONLY", "NOACCESS") and words[1].isdigit():
            sectors += int(words[1])
    return sectors * SECTOR or None
