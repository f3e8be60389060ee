"""The B2 emulator's store: SHA-1 checks while receiving, large-file rules, version order.

Pure logic on a temporary directory (no HTTP); tests/integration/test_sandbox_b2.py drives
the same code through b2sdk.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import mmap
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sandbox"))

from nfsandbox.b2.api import parse_range, slice_segments
from nfsandbox.b2.store import (
    CHUNK,
    MIN_PART_SIZE,
    B2Error,
    DiskWriter,
    Store,
    check_bucket_name,
    check_file_name,
    copy_hashing,
    receive,
)


def sha1(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "b2", "acct")


@pytest.fixture
def bucket(store: Store):
    return store.create_bucket("test-bucket", "allPublic")


def put(store: Store, bucket, name: str, data: bytes, info=None):
    tmp = store.incoming()
    size, digest, _verified = receive(io.BytesIO(data), len(data), sha1(data), tmp)
    return store.add_upload(bucket, name, None, info or {}, tmp, size, digest)


def part(store: Store, file_id: str, number: int, data: bytes):
    tmp = store.incoming()
    size, digest, _verified = receive(io.BytesIO(data), len(data), sha1(data), tmp)
    return store.add_part(file_id, number, tmp, size, digest)


# -- receiving ------------------------------------------------------------------------


def test_receive_checks_the_sha1_and_removes_a_mismatch(tmp_path: Path) -> None:
    data = b"x" * 3_000_001
    size, digest, verified = receive(io.BytesIO(data), len(data), sha1(data), tmp_path / "ok")
    assert (size, digest, verified) == (len(data), sha1(data), True)
    assert (tmp_path / "ok").read_bytes() == data
    with pytest.raises(B2Error) as err:
        receive(io.BytesIO(data), len(data), sha1(b"other"), tmp_path / "bad")
    assert (err.value.status, err.value.code) == (400, "bad_request")
    assert not (tmp_path / "bad").exists()


def test_receive_hex_digits_at_end_and_do_not_verify(tmp_path: Path) -> None:
    data = b"payload" * 1000
    body = data + sha1(data).encode()
    assert receive(io.BytesIO(body), len(body), "hex_digits_at_end", tmp_path / "a")[:2] == (len(data), sha1(data))
    assert (tmp_path / "a").read_bytes() == data
    wrong = data + sha1(b"nope").encode()
    with pytest.raises(B2Error):
        receive(io.BytesIO(wrong), len(wrong), "hex_digits_at_end", tmp_path / "b")
    assert receive(io.BytesIO(data), len(data), "do_not_verify", tmp_path / "c") == (len(data), sha1(data), False)
    with pytest.raises(B2Error, match="X-Bz-Content-Sha1"):
        receive(io.BytesIO(data), len(data), "md5please", tmp_path / "d")


def test_receive_refuses_a_short_body(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError):
        receive(io.BytesIO(b"abc"), 10, sha1(b"abc"), tmp_path / "short")
    assert not (tmp_path / "short").exists()


class Trickle(io.BytesIO):
    """Takes at most 1000 bytes per write, as an unbuffered file may."""

    def write(self, data) -> int:
        return super().write(bytes(data[:1000]))


class Full(io.BytesIO):
    def write(self, data) -> int:
        raise OSError(28, "No space left on device")


def test_copy_hashing_survives_partial_writes_and_reports_write_errors() -> None:
    data = bytes(range(256)) * 20000  # several chunks
    out = Trickle()
    digest = hashlib.sha1(usedforsecurity=False)
    copy_hashing(io.BytesIO(data), out, len(data), digest)
    assert out.getvalue() == data and digest.hexdigest() == sha1(data)
    with pytest.raises(OSError, match="No space"):
        copy_hashing(io.BytesIO(data), Full(), len(data), hashlib.sha1(usedforsecurity=False))


def direct_capable(path: Path) -> bool:
    try:
        os.close(os.open(path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    except OSError:
        return False
    return True


def test_disk_writer_writes_whole_chunks_past_the_page_cache_and_the_tail_buffered(tmp_path: Path) -> None:
    if not direct_capable(tmp_path):
        pytest.skip(f"{tmp_path} has no O_DIRECT (tmpfs?); the fallback is tested below")
    data = os.urandom(2 * CHUNK + 123)
    chunk = mmap.mmap(-1, CHUNK)  # page-aligned, as copy_hashing's buffers are
    with DiskWriter(tmp_path / "obj") as out:
        for offset in range(0, 2 * CHUNK, CHUNK):
            chunk[:] = data[offset : offset + CHUNK]
            assert out.direct is True
            assert out.write(memoryview(chunk)) == CHUNK
        tail = memoryview(data)[2 * CHUNK :]
        assert out.write(tail) == 123
        assert out.direct is False  # an unaligned length cannot go O_DIRECT
    assert (tmp_path / "obj").read_bytes() == data


def test_disk_writer_falls_back_to_buffered_writes_where_o_direct_is_refused(tmp_path: Path, monkeypatch) -> None:
    # some filesystems refuse O_DIRECT at open, others only at the first write (EINVAL)
    real_open, real_write = os.open, os.write

    def refusing_open(path, flags, mode=0o777):
        if flags & os.O_DIRECT:
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, mode)

    data = b"z" * (CHUNK + 5)
    monkeypatch.setattr(os, "open", refusing_open)
    assert receive(io.BytesIO(data), len(data), sha1(data), tmp_path / "a") == (len(data), sha1(data), True)
    assert (tmp_path / "a").read_bytes() == data
    monkeypatch.setattr(os, "open", real_open)

    def refusing_write(fd, view):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(22, "Invalid argument")
        return real_write(fd, view)

    monkeypatch.setattr(os, "write", refusing_write)
    chunk = mmap.mmap(-1, CHUNK)
    chunk[:] = data[:CHUNK]
    with DiskWriter(tmp_path / "b") as out:
        assert out.write(memoryview(chunk)) == CHUNK
        assert out.direct is False
    assert (tmp_path / "b").read_bytes() == data[:CHUNK]
    monkeypatch.setattr(os, "write", real_write)

    def denying_open(path, flags, mode=0o777):
        if flags & os.O_DIRECT:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", denying_open)
    with pytest.raises(PermissionError):  # only EINVAL means "no O_DIRECT here"
        DiskWriter(tmp_path / "c")


def test_names_follow_b2_rules() -> None:
    assert check_file_name("a/b c.txt") == "a/b c.txt"
    for bad in ("", "/lead", "trail/", "a//b", "ctl\x01", "x" * 1025):
        with pytest.raises(B2Error):
            check_file_name(bad)
    assert check_bucket_name("nixforge-1") == "nixforge-1"
    for bad in ("short", "b2-reserved", "under_score", "x" * 64):
        with pytest.raises(B2Error):
            check_bucket_name(bad)


# -- buckets --------------------------------------------------------------------------


def test_buckets_unique_typed_and_only_deleted_empty(store: Store, bucket) -> None:
    with pytest.raises(B2Error) as err:
        store.create_bucket("test-bucket", "allPrivate")
    assert err.value.code == "duplicate_bucket_name"
    with pytest.raises(B2Error):
        store.create_bucket("other-bucket", "snapshot")
    put(store, bucket, "f", b"1")
    with pytest.raises(B2Error) as err:
        store.delete_bucket(bucket.id)
    assert err.value.code == "cannot_delete_non_empty_bucket"


# -- large files ----------------------------------------------------------------------


def test_large_file_finishes_from_its_parts_without_copying(store: Store, bucket) -> None:
    big = store.start_large(bucket, "big.img", "application/octet-stream", {"nixforge-build-id": "b1"})
    one, two = b"a" * MIN_PART_SIZE, b"b" * 1000
    part(store, big.id, 2, two)
    part(store, big.id, 1, b"stale")
    part(store, big.id, 1, one)  # uploaded again: replaces the first
    done = store.finish_large(big.id, [sha1(one), sha1(two)])
    assert (done.action, done.size, done.sha1) == ("upload", len(one) + len(two), "none")
    assert [size for _path, size in done.segments] == [len(one), len(two)]
    assert b"".join(p.read_bytes() for p, _size in done.segments) == one + two
    assert store.latest(bucket, "big.img") is done


def test_finish_refuses_small_parts_missing_parts_and_wrong_sha1(store: Store, bucket) -> None:
    big = store.start_large(bucket, "big.img", None, {})
    small, last = b"s" * (MIN_PART_SIZE - 1), b"l" * 10
    part(store, big.id, 1, small)
    part(store, big.id, 2, last)
    with pytest.raises(B2Error, match="smaller than the minimum part size"):
        store.finish_large(big.id, [sha1(small), sha1(last)])
    with pytest.raises(B2Error) as err:
        store.finish_large(big.id, [sha1(small), sha1(b"other")])
    assert err.value.code == "part_sha1_mismatch"
    with pytest.raises(B2Error) as err:
        store.finish_large(big.id, [sha1(small), sha1(last), sha1(b"3")])
    assert err.value.code == "missing_part"
    with pytest.raises(B2Error, match="at least 2 parts"):
        store.finish_large(big.id, [sha1(small)])
    assert store.get(big.id).action == "start"  # still unfinished after every refusal


def test_cancel_removes_parts_from_disk(store: Store, bucket) -> None:
    big = store.start_large(bucket, "big.img", None, {})
    p = part(store, big.id, 1, b"x" * 10)
    assert p.path.exists()
    store.cancel_large(big.id)
    assert not p.path.exists() and store.get(big.id) is None
    with pytest.raises(B2Error):
        store.cancel_large(big.id)


def test_list_parts_and_unfinished_pages(store: Store, bucket) -> None:
    big = store.start_large(bucket, "dir/big.img", None, {})
    for n in (1, 2, 3):
        part(store, big.id, n, bytes([n]) * 5)
    page, nxt = store.list_parts(big.id, 1, 2)
    assert [p.number for p in page] == [1, 2] and nxt == 3
    store.start_large(bucket, "other", None, {})
    files, nxt = store.list_unfinished(bucket, "dir/", None, 100)
    assert [f.id for f in files] == [big.id] and nxt is None


# -- versions -------------------------------------------------------------------------


def test_versions_newest_first_hide_and_delete(store: Store, bucket) -> None:
    old = put(store, bucket, "a", b"1")
    new = put(store, bucket, "a", b"2")
    other = put(store, bucket, "b", b"3")
    versions = store.list_versions(bucket, None, None, 100, "")[0]
    assert [v.id for v in versions] == [new.id, old.id, other.id]
    page, next_name, next_id = store.list_versions(bucket, None, None, 1, "")
    assert [v.id for v in page] == [new.id] and (next_name, next_id) == ("a", old.id)
    page = store.list_versions(bucket, next_name, next_id, 100, "")[0]
    assert [v.id for v in page] == [old.id, other.id]
    hidden = store.hide(bucket, "a")
    assert store.latest(bucket, "a") is None
    names = store.list_names(bucket, None, 100, "", None)[0]
    assert [n.name for n in names] == ["b"]
    with pytest.raises(B2Error) as err:
        store.hide(bucket, "a")
    assert err.value.code == "already_hidden"
    store.delete_version(hidden.id, "a")
    assert store.latest(bucket, "a").id == new.id
    with pytest.raises(B2Error) as err:
        store.delete_version(new.id, "wrong-name")
    assert err.value.code == "file_not_present"


def test_list_names_with_delimiter_and_start(store: Store, bucket) -> None:
    for name in ("a/1", "a/2", "b", "c/d/e"):
        put(store, bucket, name, b"x")
    items, nxt = store.list_names(bucket, None, 100, "", "/")
    assert [i if isinstance(i, str) else i.name for i in items] == ["a/", "b", "c/"]
    items, nxt = store.list_names(bucket, "a/2", 1, "", None)
    assert [i.name for i in items] == ["a/2"] and nxt == "b"


def test_reset_keeps_fixture_buckets_only(store: Store, tmp_path: Path) -> None:
    fixture = store.create_bucket("fixture-bucket", "allPublic", fixture=True)
    made = store.create_bucket("made-bucket", "allPrivate")
    version = put(store, made, "f", b"data")
    store.reset()
    assert list(store.buckets) == [fixture.id]
    assert store.get(version.id) is None and not version.segments[0][0].exists()


# -- download helpers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 9)),
        ("bytes=90-", (90, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=50-500", (50, 99)),
        ("bytes=100-", "unsatisfiable"),
        ("bytes=0-1,5-6", None),
    ],
)
def test_parse_range(header, expected) -> None:
    assert parse_range(header, 100) == expected


def test_slice_segments_spans_parts() -> None:
    a, b, c = Path("a"), Path("b"), Path("c")
    segments = [(a, 10), (b, 10), (c, 5)]
    assert slice_segments(segments, 0, 25) == [(a, 0, 10), (b, 0, 10), (c, 0, 5)]
    assert slice_segments(segments, 8, 4) == [(a, 8, 2), (b, 0, 2)]
    assert slice_segments(segments, 20, 5) == [(c, 0, 5)]
