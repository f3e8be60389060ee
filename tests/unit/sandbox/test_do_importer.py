"""The DigitalOcean emulator's importer: format sniffing on small real images, and fetching
over real HTTP from a local server (no sandbox needed)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sandbox"))

from nfsandbox.digitalocean import importer
from nfsandbox.digitalocean.importer import ImportRefused
from nfsandbox.digitalocean.testing import (
    MIB,
    FileServer,
    gpt_image,
    mbr_image,
    qcow2_image,
    vdi_image,
    vhdx_image,
    vmdk_descriptor,
    vmdk_image,
)

GIB = 1024**3
LIMIT = 100 * GIB


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("data", "fmt", "virtual"),
    [
        (qcow2_image(3 * GIB), "qcow2", 3 * GIB),
        (mbr_image(2 * MIB), "raw", 2 * MIB),
        (gpt_image(3 * MIB), "raw", 3 * MIB),
        (vhdx_image(5 * GIB), "vhdx", 5 * GIB),
        (vdi_image(7 * GIB), "vdi", 7 * GIB),
        (vmdk_image(2 * GIB), "vmdk", 2 * GIB),
        (vmdk_descriptor(GIB), "vmdk", GIB),
    ],
    ids=["qcow2", "mbr", "gpt", "vhdx", "vdi", "vmdk-sparse", "vmdk-descriptor"],
)
@pytest.mark.parametrize("compression", [None, "gzip", "bzip2"])
def test_accepted_formats_and_their_virtual_size(tmp_path, data, fmt, virtual, compression):
    packed = {None: data, "gzip": gzip.compress(data), "bzip2": bz2.compress(data)}[compression]
    result = importer.inspect(write(tmp_path, "image", packed), LIMIT)
    assert (result.format, result.compression, result.virtual_size) == (fmt, compression, virtual)


def test_qcow2_header_is_what_qemu_img_writes():
    image = qcow2_image(GIB)
    assert image[:4] == b"QFI\xfb"
    assert int.from_bytes(image[4:8], "big") == 3
    assert int.from_bytes(image[24:32], "big") == GIB
    assert len(image) == 4 * 65536


@pytest.mark.parametrize(
    "data",
    [
        b"hello world\n" * 100,
        b"\0" * 4096,  # no boot signature
        b"QFI\xfb" + (1).to_bytes(4, "big") + b"\0" * 100,  # qcow version 1: not qcow2
        b"<?xml version='1.0'?><ova/>",
    ],
    ids=["text", "zeros", "qcow1", "xml"],
)
@pytest.mark.parametrize("compression", [None, "gzip", "bzip2"])
def test_other_content_is_refused_with_the_format_message(tmp_path, data, compression):
    packed = {None: data, "gzip": gzip.compress(data), "bzip2": bz2.compress(data)}[compression]
    with pytest.raises(ImportRefused, match="We don't support the format"):
        importer.inspect(write(tmp_path, "image", packed), LIMIT)


def test_a_tar_gz_is_refused_even_with_a_disk_inside(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        disk = qcow2_image(GIB)
        info = tarfile.TarInfo("disk.qcow2")
        info.size = len(disk)
        tar.addfile(info, io.BytesIO(disk))
    with pytest.raises(ImportRefused, match="We don't support the format"):
        importer.inspect(write(tmp_path, "image.tar.gz", buffer.getvalue()), LIMIT)


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress], ids=["gzip", "bzip2"])
def test_a_corrupt_archive_gets_the_decompression_message(tmp_path, compress):
    packed = compress(qcow2_image(GIB) + b"x" * 10000)
    damaged = packed[: len(packed) // 2] + bytes(b ^ 0x5A for b in packed[len(packed) // 2 :])
    with pytest.raises(ImportRefused, match="problem decompressing your file"):
        importer.inspect(write(tmp_path, "image", damaged), LIMIT)


def test_a_truncated_archive_gets_the_decompression_message(tmp_path):
    packed = gzip.compress(mbr_image(MIB))
    with pytest.raises(ImportRefused, match="problem decompressing"):
        importer.inspect(write(tmp_path, "image", packed[:-20]), LIMIT)


def test_size_limit_applies_to_the_decompressed_and_the_virtual_size(tmp_path):
    raw = mbr_image(2 * MIB)
    with pytest.raises(ImportRefused, match="larger than the maximum size"):
        importer.inspect(write(tmp_path, "a.gz", gzip.compress(raw)), MIB)
    with pytest.raises(ImportRefused, match="larger than the maximum size"):
        importer.inspect(write(tmp_path, "b", qcow2_image(2 * GIB)), GIB)
    assert importer.inspect(write(tmp_path, "c", qcow2_image(GIB)), GIB).virtual_size == GIB


# -- fetching ------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    with FileServer(root, forbidden=("secret.img",)) as server:
        server.root = root
        yield server


def test_fetch_sends_head_then_get_and_hashes_the_bytes_as_fetched(files, tmp_path):
    body = gzip.compress(qcow2_image(GIB))
    (files.root / "disk.qcow2.gz").write_bytes(body)
    fetched = importer.fetch(files.url("disk.qcow2.gz"), tmp_path / "dl", LIMIT)
    assert fetched.sha256 == hashlib.sha256(body).hexdigest()
    assert fetched.size == len(body)
    assert (tmp_path / "dl").read_bytes() == body
    assert [method for method, _path in files.requests] == ["HEAD", "GET"]


@pytest.mark.parametrize(("name", "answer"), [("missing.img", "404"), ("secret.img", "403")])
def test_fetch_refuses_error_answers(files, tmp_path, name, answer):
    (files.root / "secret.img").write_bytes(mbr_image())
    with pytest.raises(ImportRefused, match=f"unable to download.*{answer}"):
        importer.fetch(files.url(name), tmp_path / "dl", LIMIT)


def test_fetch_refuses_an_unreachable_url(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ImportRefused, match=r"unable to download.*refused"):
        importer.fetch(f"http://127.0.0.1:{port}/disk.img", tmp_path / "dl", LIMIT)


def test_fetch_refuses_a_body_over_the_limit(files, tmp_path):
    (files.root / "big.img").write_bytes(mbr_image(2 * MIB))
    with pytest.raises(ImportRefused, match="larger than the maximum size"):
        importer.fetch(files.url("big.img"), tmp_path / "dl", MIB)
    assert [method for method, _path in files.requests] == ["HEAD"]  # Content-Length said it already


@pytest.mark.parametrize(
    "url",
    ["http://203.0.113.7/disk.img", "http://example.com/disk.img", "ftp://127.0.0.1/disk.img"],
    ids=["foreign-address", "dns-name", "ftp"],
)
def test_fetch_never_leaves_the_machine(tmp_path, url):
    with pytest.raises(ImportRefused, match="unable to download"):
        importer.fetch(url, tmp_path / "dl", LIMIT)


def test_sandbox_network_is_allowed_and_query_strings_only_refused_on_request(files, tmp_path):
    importer.check_url("http://10.213.3.10/x", ["10.213.3.0/24"])
    with pytest.raises(ImportRefused):
        importer.check_url("http://10.213.4.10/x", ["10.213.3.0/24"])
    (files.root / "disk.img").write_bytes(mbr_image())
    url = files.url("disk.img") + "?Authorization=abc"
    assert importer.fetch(url, tmp_path / "dl", LIMIT).size == MIB
    with pytest.raises(ImportRefused, match="query string"):
        importer.fetch(url, tmp_path / "dl", LIMIT, refuse_query=True)


@pytest.mark.parametrize("status", [405, 501])
def test_fetch_fails_when_the_server_does_not_answer_head(tmp_path, status):
    """DigitalOcean sends HEAD first; a server without HEAD fails the import, no GET follows."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "disk.img").write_bytes(mbr_image())
    with FileServer(root, no_head={"disk.img": status}) as files:
        with pytest.raises(ImportRefused, match=f"answered {status} .* HEAD request"):
            importer.fetch(files.url("disk.img"), tmp_path / "dl", LIMIT)
        assert [method for method, _path in files.requests] == ["HEAD"]
