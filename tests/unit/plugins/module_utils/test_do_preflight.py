"""Unit tests of module_utils/_digitalocean/_preflight.py: the controller's check of an image
file and URL before anything is uploaded, on small but structurally real images (the same
builders the DigitalOcean emulator's own importer tests use, so both agree on every format)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import sys
import tarfile
from pathlib import Path

import pytest
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean import _preflight
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._preflight import (
    ImageRefused,
    check_import_url,
    inspect_image,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "sandbox"))
from nfsandbox.digitalocean import importer
from nfsandbox.digitalocean.testing import (
    MIB,
    gpt_image,
    mbr_image,
    qcow2_image,
    vdi_image,
    vhdx_image,
    vmdk_descriptor,
    vmdk_image,
)

GIB = 1024**3


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


IMAGES = {
    "qcow2": (lambda: qcow2_image(3 * GIB), "qcow2", 3 * GIB),
    "mbr": (lambda: mbr_image(2 * MIB), "raw", 2 * MIB),
    "gpt": (lambda: gpt_image(2 * MIB), "raw", 2 * MIB),
    "vhdx": (lambda: vhdx_image(5 * GIB), "vhdx", 5 * GIB),
    "vdi": (lambda: vdi_image(7 * GIB), "vdi", 7 * GIB),
    "vmdk": (lambda: vmdk_image(9 * GIB), "vmdk", 9 * GIB),
    "vmdk-descriptor": (lambda: vmdk_descriptor(4 * GIB), "vmdk", 4 * GIB),
}
COMPRESSIONS = {None: lambda b: b, "gzip": gzip.compress, "bzip2": bz2.compress}


@pytest.mark.parametrize("compression", list(COMPRESSIONS), ids=["plain", "gzip", "bzip2"])
@pytest.mark.parametrize("kind", list(IMAGES))
def test_every_format_in_every_compression_digitalocean_takes(tmp_path, kind, compression):
    build, fmt, size = IMAGES[kind]
    raw = build()
    facts = inspect_image(write(tmp_path, "image", COMPRESSIONS[compression](raw)))
    assert (facts.format, facts.compression, facts.virtual_size) == (fmt, compression, size)
    # the emulator's importer, which stands for DigitalOcean here, reads the same
    inner = importer.inspect(tmp_path / "image", 100 * GIB)
    assert (inner.format, inner.compression, inner.virtual_size) == (fmt, compression, size)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (
            lzma.compress(qcow2_image(GIB)),
            "xz; DigitalOcean takes images uncompressed or compressed with gzip or bzip2 only",
        ),
        (b"\x28\xb5\x2f\xfd" + b"\0" * 64, "zstd"),
        (b"PK\x03\x04" + b"\0" * 64, "a zip archive"),
        (b"\0" * MIB, "not in a format DigitalOcean imports"),
        (gzip.compress(b"\0" * MIB), "not in a format DigitalOcean imports"),
        (gzip.compress(qcow2_image(GIB))[:200], "cannot be decompressed"),
        (b"", "empty"),
    ],
    ids=["xz", "zstd", "zip", "unknown", "unknown-in-gzip", "truncated-gzip", "empty"],
)
def test_what_digitalocean_refuses_is_refused_with_the_reason_and_a_fix(tmp_path, data, text):
    with pytest.raises(ImageRefused, match=text.replace("(", r"\(")) as info:
        inspect_image(write(tmp_path, "image", data))
    assert info.value.hint


def test_a_tar_archive_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("disk.raw")
        payload = mbr_image()
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ImageRefused, match="tar archive"):
        inspect_image(write(tmp_path, "image.tar", buffer.getvalue()))
    with pytest.raises(ImageRefused, match="tar archive"):  # inside gzip, as a .tar.gz
        inspect_image(write(tmp_path, "image.tar.gz", gzip.compress(buffer.getvalue())))


def test_a_virtual_size_over_the_limit_is_refused_from_the_header_alone(tmp_path):
    path = write(tmp_path, "big.qcow2.gz", gzip.compress(qcow2_image(101 * GIB)))
    with pytest.raises(ImageRefused, match=r"virtual disk size is 101\.0 GiB, over DigitalOcean's limit of 100 GiB"):
        inspect_image(path)
    assert inspect_image(write(tmp_path, "ok.qcow2.gz", gzip.compress(qcow2_image(100 * GIB)))).format == "qcow2"


def test_a_raw_image_in_gzip_is_measured_by_its_whole_stream(tmp_path, monkeypatch):
    path = write(tmp_path, "disk.img.gz", gzip.compress(mbr_image(3 * MIB)))
    facts = inspect_image(path)
    assert facts.uncompressed_size == facts.virtual_size == 3 * MIB
    with pytest.raises(ImageRefused, match="uncompressed size"):
        inspect_image(path, limit=2 * MIB)
    # the stream is read in chunks and abandoned past the limit, never held whole
    monkeypatch.setattr(_preflight, "CHUNK", 64 * 1024)
    with pytest.raises(ImageRefused, match="uncompressed size"):
        inspect_image(path, limit=MIB)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ImageRefused, match="cannot read the image file"):
        inspect_image(str(tmp_path / "nope.qcow2.gz"))


@pytest.mark.parametrize(
    "url",
    [
        "https://f001.backblazeb2.com/file/bucket/nixos.qcow2.gz?Authorization=3_2026abc",
        "https://example.com/x.img?",
    ],
)
def test_urls_with_a_query_string_are_refused_with_the_fix(url):
    if url.endswith("?"):  # an empty query is no query
        check_import_url(url)
        return
    with pytest.raises(ImageRefused, match="query string") as info:
        check_import_url(url)
    assert "do_image_publish_url_mode=public" in info.value.hint


def test_plain_urls_pass_and_other_schemes_do_not():
    check_import_url("https://f001.backblazeb2.com/file/bucket/nixos-4f2a.qcow2.gz")
    with pytest.raises(ImageRefused, match="http"):
        check_import_url("ftp://example.com/x.img")
