"""The verified-sha256 record on a file: valid only while the file is the one it was made for."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from ansible_collections.nixforge.images.plugins.module_utils._base import _checksum_record as checksum_record
from ansible_collections.nixforge.images.plugins.module_utils._base._checksum_record import forget, record, recorded


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "image.img"
    path.write_bytes(b"nixos" * 1000)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_record_holds_while_the_file_is_unchanged(image) -> None:
    path, sha = image
    assert recorded(str(path)) is None
    assert record(str(path), sha)
    assert recorded(str(path)) == sha
    os.rename(path, path.with_name("moved.img"))  # same inode, size and mtime: still the same bytes
    assert recorded(str(path.with_name("moved.img"))) == sha
    forget(str(path.with_name("moved.img")))
    assert recorded(str(path.with_name("moved.img"))) is None


def test_a_write_makes_the_record_stale(image) -> None:
    path, sha = image
    record(str(path), sha)
    with open(path, "r+b") as fh:  # same size, new content
        fh.write(b"X")
    assert recorded(str(path)) is None


def test_a_new_file_in_its_place_has_no_record(image, tmp_path: Path) -> None:
    path, sha = image
    record(str(path), sha)
    other = tmp_path / "other"
    other.write_bytes(path.read_bytes())
    st = path.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime, another inode
    other.replace(path)
    assert recorded(str(path)) is None


@pytest.mark.parametrize("value", ["", "nonsense", "%s 1 2 3" % ("z" * 64)])
def test_a_malformed_record_is_ignored(image, value: str) -> None:
    path, _sha = image
    os.setxattr(path, checksum_record.ATTRIBUTE, value.encode())
    assert recorded(str(path)) is None


def test_only_a_sha256_is_recorded(image) -> None:
    path, _sha = image
    assert not record(str(path), "not-a-digest")
    assert recorded(str(path)) is None


def test_a_filesystem_without_xattrs_keeps_no_record(image, monkeypatch) -> None:
    path, sha = image

    def unsupported(*_args: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", unsupported)
    monkeypatch.setattr(os, "getxattr", unsupported)
    assert not record(str(path), sha)
    assert recorded(str(path)) is None
    assert recorded(str(path.with_name("missing"))) is None
